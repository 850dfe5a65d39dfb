//! When a closing connection's socket is really closed, as a sans-IO rule (time is passed in).
//!
//! A connection closes with a last frame (a Kick or a fatal Error). That frame is worth
//! nothing unless the client gets it, so the socket stays open until the frame is written,
//! however long the client takes to read what is before it (a slow consumer's kernel buffers
//! are full by definition), but at most `close_timeout`. Once everything is written the
//! gateway shuts down its sending side and keeps draining input for a short linger, so that
//! unread input does not turn the close into a reset that would destroy the frame in flight.
//! A closing connection holds only its last frame (the queue was dropped for it), so waiting
//! costs a socket and a few hundred bytes.

use std::time::{Duration, Instant};

/// After the last frame is written, how long input is drained before the socket closes.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// The close deadline of one connection (16 bytes: whether everything was written is the
/// driver's "no outbound queue", not stored twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseTimer {
    deadline: Instant,
}

impl CloseTimer {
    /// Closing starts at `now`; `written` says whether everything (the last frame included) was
    /// already taken by the socket.
    pub fn start(now: Instant, written: bool, close_timeout: Duration) -> Self {
        let deadline = if written { now + CLOSE_LINGER } else { now + close_timeout };
        Self { deadline }
    }

    /// The last byte of a close that started unwritten was taken by the socket at `now`:
    /// linger from here.
    pub fn on_written(&mut self, now: Instant) {
        self.deadline = now + CLOSE_LINGER;
    }

    /// When the socket closes, written or not.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the socket must close at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn a_written_close_lingers_briefly() {
        let t0 = Instant::now();
        let t = CloseTimer::start(t0, true, TIMEOUT);
        assert!(!t.due(t0 + CLOSE_LINGER - Duration::from_millis(1)));
        assert!(t.due(t0 + CLOSE_LINGER));
    }

    #[test]
    fn an_unwritten_last_frame_waits_for_the_reader_up_to_the_timeout() {
        let t0 = Instant::now();
        let mut t = CloseTimer::start(t0, false, TIMEOUT);
        // Far past the linger, the frame is still waiting: keep the socket.
        assert!(!t.due(t0 + Duration::from_secs(9)));
        // The reader takes it at 9 s: linger from there.
        let t9 = t0 + Duration::from_secs(9);
        t.on_written(t9);
        assert!(!t.due(t9 + CLOSE_LINGER - Duration::from_millis(1)));
        assert!(t.due(t9 + CLOSE_LINGER));
        assert_eq!(t.deadline(), t9 + CLOSE_LINGER);
    }

    #[test]
    fn a_reader_that_never_reads_is_closed_at_the_timeout() {
        let t0 = Instant::now();
        let t = CloseTimer::start(t0, false, TIMEOUT);
        assert!(!t.due(t0 + TIMEOUT - Duration::from_millis(1)));
        assert!(t.due(t0 + TIMEOUT));
    }
}
