//! A connection's outbound queue: frames waiting to be written, capped in bytes and frames.
//! It holds no buffer while empty. Past a cap the queue is replaced by one Kick
//! (SLOW_CONSUMER) and the connection closes; the client recovers by sync.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing; the frame was dropped.
    Closed,
    /// This frame would exceed a cap: the connection is now closing with a SLOW_CONSUMER kick.
    Overflow,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closing: bool,
}

/// The queue between whoever produces frames for a connection (its own replies, pushes from
/// dispatch, kicks) and the task that writes them to the socket.
#[derive(Debug, Default)]
pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
}

/// One batch for the writer.
#[derive(Debug)]
pub struct Batch {
    /// Frames to write, in order.
    pub frames: VecDeque<Bytes>,
    /// After these, close the connection.
    pub close: bool,
}

impl Outbound {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a few plain field updates), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` unless that would pass `max_bytes` or `max_frames`; past a cap the queue
    /// is dropped and replaced by `overflow_kick`, and the connection starts closing.
    pub fn push(
        &self,
        frame: Bytes,
        max_bytes: usize,
        max_frames: usize,
        overflow_kick: impl FnOnce() -> Bytes,
    ) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closing {
            return Err(PushError::Closed);
        }
        if st.bytes + frame.len() > max_bytes || st.frames.len() >= max_frames {
            st.frames = VecDeque::from([overflow_kick()]);
            st.bytes = 0;
            st.closing = true;
            drop(st);
            self.notify.notify_one();
            return Err(PushError::Overflow);
        }
        st.bytes += frame.len();
        st.frames.push_back(frame);
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// Starts closing: `last` (a Kick or fatal Error), if any, is written after what is queued,
    /// then the connection closes. Returns false when it was already closing.
    pub fn close_with(&self, last: Option<Bytes>) -> bool {
        let mut st = self.lock();
        if st.closing {
            return false;
        }
        st.closing = true;
        if let Some(f) = last {
            st.frames.push_back(f);
        }
        drop(st);
        self.notify.notify_one();
        true
    }

    /// Whether the queue is closing.
    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits for frames (or for closing) and takes them all, leaving no buffer behind.
    pub async fn next_batch(&self) -> Batch {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if !st.frames.is_empty() || st.closing {
                    st.bytes = 0;
                    return Batch { frames: std::mem::take(&mut st.frames), close: st.closing };
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kick() -> Bytes {
        Bytes::from_static(b"kick")
    }

    #[tokio::test]
    async fn queue_caps_bytes_then_closes_with_kick() {
        let q = Outbound::default();
        q.push(Bytes::from(vec![0; 60]), 100, 10, kick).unwrap();
        assert_eq!(q.queued_bytes(), 60);
        assert_eq!(q.push(Bytes::from(vec![0; 60]), 100, 10, kick), Err(PushError::Overflow));
        assert_eq!(q.push(Bytes::from(vec![0; 1]), 100, 10, kick), Err(PushError::Closed));
        let b = q.next_batch().await;
        assert!(b.close);
        assert_eq!(b.frames, VecDeque::from([kick()]));
    }

    #[tokio::test]
    async fn queue_caps_frames_and_batches_in_order() {
        let q = Outbound::default();
        for i in 0..3u8 {
            q.push(Bytes::from(vec![i]), 1000, 3, kick).unwrap();
        }
        assert_eq!(q.push(Bytes::from(vec![9]), 1000, 3, kick), Err(PushError::Overflow));
        let q = Outbound::default();
        q.push(Bytes::from_static(b"a"), 1000, 3, kick).unwrap();
        q.push(Bytes::from_static(b"b"), 1000, 3, kick).unwrap();
        let b = q.next_batch().await;
        assert!(!b.close);
        assert_eq!(b.frames, VecDeque::from([Bytes::from_static(b"a"), Bytes::from_static(b"b")]));
        assert_eq!(q.queued_bytes(), 0);
        assert!(q.close_with(Some(Bytes::from_static(b"bye"))));
        assert!(!q.close_with(None));
        let b = q.next_batch().await;
        assert!(b.close);
        assert_eq!(b.frames, VecDeque::from([Bytes::from_static(b"bye")]));
    }
}
