//! A connection's outbound queue: frames the socket has not taken yet, capped in bytes and
//! frames. Sans-IO: it writes into any [`Write`]. A connection has one only while something
//! waits to be written (the core keeps `Option<Box<OutQueue>>` and drops it once drained).
//! Past a cap the queue is replaced by one Kick (SLOW_CONSUMER) and the connection closes; the
//! client recovers by sync.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// Frames written with one `writev` at most.
const MAX_IOVECS: usize = 64;

/// This frame would pass a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Frames waiting for the socket, in order; the first may be partly written.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Bytes of the first frame already written.
    head_written: usize,
    /// Bytes queued and not written yet.
    bytes: usize,
}

impl OutQueue {
    /// A queue holding the unwritten rest of `frame` (its first `written` bytes went out).
    pub fn with_rest(frame: Bytes, written: usize) -> Self {
        let bytes = frame.len().saturating_sub(written);
        Self { frames: VecDeque::from([frame]), head_written: written, bytes }
    }

    /// Queues `frame` unless that would pass `max_bytes` or `max_frames`.
    pub fn push(
        &mut self,
        frame: Bytes,
        max_bytes: usize,
        max_frames: usize,
    ) -> Result<(), Overflow> {
        if self.bytes + frame.len() > max_bytes || self.frames.len() >= max_frames {
            return Err(Overflow);
        }
        self.push_uncapped(frame);
        Ok(())
    }

    /// Queues `frame` whatever the caps (the last frame before closing: a Kick or an Error).
    pub fn push_uncapped(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops everything queued and queues only `frame` (the overflow Kick).
    pub fn replace_with(&mut self, frame: Bytes) {
        // Keep a partly written frame whole on the wire: the client must see frame borders.
        let keep = if self.head_written > 0 { self.frames.pop_front() } else { None };
        self.frames.clear();
        self.bytes = 0;
        if let Some(head) = keep {
            self.bytes = head.len() - self.head_written;
            self.frames.push_back(head);
        }
        self.push_uncapped(frame);
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Frames waiting (the first may be partly written).
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes as much as `w` takes now. Ok(true) when the queue is empty afterwards, Ok(false)
    /// when the socket is full (`WouldBlock`), Err when the socket failed.
    pub fn flush(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, f) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                    let skip = if i == 0 { self.head_written } else { 0 };
                    slices[count] = IoSlice::new(&f[skip..]);
                    count += 1;
                }
                match w.write_vectored(&slices[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.consume(n);
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(head) = self.frames.front() else { break };
            let left = head.len() - self.head_written;
            if n < left {
                self.head_written += n;
                return;
            }
            n -= left;
            self.frames.pop_front();
            self.head_written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `room` bytes per call, then says WouldBlock.
    struct Trickle {
        out: Vec<u8>,
        room: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls -= 1;
            let n = buf.len().min(self.room);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn caps_bytes_and_frames() {
        let mut q = OutQueue::default();
        q.push(Bytes::from(vec![0; 60]), 100, 10).unwrap();
        assert_eq!(q.queued_bytes(), 60);
        assert_eq!(q.push(Bytes::from(vec![0; 41]), 100, 10), Err(Overflow));
        q.push(Bytes::from(vec![0; 40]), 100, 10).unwrap();
        let mut q = OutQueue::default();
        for i in 0..3u8 {
            q.push(Bytes::from(vec![i]), 1000, 3).unwrap();
        }
        assert_eq!(q.push(Bytes::from(vec![9]), 1000, 3), Err(Overflow));
    }

    #[test]
    fn partial_writes_keep_order_and_bytes() {
        let mut q = OutQueue::with_rest(b("xxhello"), 2);
        q.push(b(" wide"), 100, 10).unwrap();
        q.push(b(" world"), 100, 10).unwrap();
        assert_eq!(q.queued_bytes(), 16);
        let mut w = Trickle { out: Vec::new(), room: 3, calls: 2 };
        assert!(!q.flush(&mut w).unwrap());
        // The default write_vectored writes from the first slice only: "hel", then "lo".
        assert_eq!(w.out, b"hello");
        assert_eq!(q.queued_bytes(), 11);
        w.calls = 100;
        assert!(q.flush(&mut w).unwrap());
        assert_eq!(w.out, b"hello wide world");
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn overflow_replacement_keeps_a_partly_written_frame_whole() {
        let mut q = OutQueue::with_rest(b("abcdef"), 4);
        q.push(b("ghi"), 100, 10).unwrap();
        q.replace_with(b("KICK"));
        let mut w = Trickle { out: Vec::new(), room: 100, calls: 10 };
        assert!(q.flush(&mut w).unwrap());
        assert_eq!(w.out, b"efKICK");
        let mut q = OutQueue::default();
        q.push(b("ghi"), 100, 10).unwrap();
        q.replace_with(b("KICK"));
        let mut w = Trickle { out: Vec::new(), room: 100, calls: 10 };
        assert!(q.flush(&mut w).unwrap());
        assert_eq!(w.out, b"KICK");
    }
}
