//! The sans-IO frame codec: a frame is a 4-byte big-endian length `N` followed by `N` bytes of
//! a protobuf [`Envelope`]. The decoder tells "need more bytes" (`Ok(None)`) from "bad bytes"
//! (`Err`), and checks the announced length against the maximum before allocating anything.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::error::FrameError;
use crate::v1::Envelope;

/// Size of the length prefix in bytes.
pub const LEN_PREFIX_BYTES: usize = 4;

/// Default maximum frame size (protobuf bytes, without the prefix): 64 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Smallest maximum frame size a server may be configured with: 8 KiB, so that the message
/// body limit (`max_frame_bytes - 2048`) and the sync page budget (`max_frame_bytes - 4096`)
/// both stay positive (6 KiB and 4 KiB at the minimum).
pub const MIN_MAX_FRAME_BYTES: usize = 8 * 1024;

/// Incremental decoder. Feed it a buffer that accumulates bytes from the peer; each call takes
/// at most one complete frame off the front of the buffer.
///
/// Calling convention: append received bytes to `buf`, then call [`FrameDecoder::decode`]
/// until it returns `Ok(None)` (wait for more bytes) or `Err` (close the connection: the
/// stream cannot be resynchronised after a bad frame).
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames larger than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes }
    }

    /// The configured maximum frame size.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Reads the length prefix at the front of `buf` without consuming anything.
    /// `Ok(None)`: fewer than 4 bytes. `Err(TooLarge)`: the frame may never be accepted.
    pub fn peek_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = buf.get(..LEN_PREFIX_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge { len: len as u64, max: self.max_frame_bytes });
        }
        Ok(Some(len))
    }

    /// Takes one frame's payload (the protobuf bytes) off the front of `buf`, without decoding
    /// it. `Ok(None)` when the frame is not complete yet; then `buf` is reserved up to the
    /// frame's size (bounded by the maximum) so the rest arrives without reallocations.
    pub fn decode_payload(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(len) = self.peek_len(buf)? else {
            return Ok(None);
        };
        let total = LEN_PREFIX_BYTES + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(LEN_PREFIX_BYTES);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// Takes one frame off the front of `buf` and decodes it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
        self.decode_as(buf)
    }

    /// Takes one frame off the front of `buf` and decodes it as `M` (for the internal link
    /// protocol, which frames `link::v1::LinkFrame`s the same way).
    pub fn decode_as<M: Message + Default>(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<M>, FrameError> {
        match self.decode_payload(buf)? {
            Some(payload) => Ok(Some(M::decode(payload)?)),
            None => Ok(None),
        }
    }

    /// Decodes one frame from the front of a plain slice, returning the envelope and the number
    /// of bytes it used. For callers that keep bytes in their own buffer (e.g. a per-thread
    /// scratch buffer) and copy out only an incomplete tail.
    pub fn decode_slice(&self, buf: &[u8]) -> Result<Option<(Envelope, usize)>, FrameError> {
        let Some(len) = self.peek_len(buf)? else {
            return Ok(None);
        };
        let total = LEN_PREFIX_BYTES + len;
        let Some(payload) = buf.get(LEN_PREFIX_BYTES..total) else {
            return Ok(None);
        };
        Ok(Some((Envelope::decode(payload)?, total)))
    }
}

/// Appends `env` (an [`Envelope`], or any message framed the same way) as one frame (prefix +
/// protobuf bytes) to `dst`. Fails, writing nothing, when the encoded message is larger than
/// `max_frame_bytes`.
pub fn encode_frame(
    env: &impl Message,
    max_frame_bytes: usize,
    dst: &mut impl BufMut,
) -> Result<(), FrameError> {
    let len = env.encoded_len();
    if len > max_frame_bytes || len > u32::MAX as usize {
        return Err(FrameError::Oversized { len, max: max_frame_bytes });
    }
    dst.put_u32(len as u32);
    // ok: `encode_raw` cannot fail; `encode` only fails when `dst` has too little room, and
    // BufMut implementations used here grow.
    env.encode_raw(dst);
    Ok(())
}

/// Encodes `env` as one frame into a fresh `Bytes`, e.g. to share one encoding among many
/// recipients.
pub fn encode_to_bytes(env: &impl Message, max_frame_bytes: usize) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(LEN_PREFIX_BYTES + env.encoded_len());
    encode_frame(env, max_frame_bytes, &mut buf)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::envelope::Body;

    fn ping(request_id: u64) -> Envelope {
        Envelope { request_id, body: Some(Body::Ping(crate::v1::Ping { client_time_ms: 1 })) }
    }

    #[test]
    fn frame_is_big_endian_length_then_protobuf() {
        let bytes = encode_to_bytes(&ping(1), DEFAULT_MAX_FRAME_BYTES);
        // request_id=1 (08 01), ping field 12 len 2 (62 02) { client_time_ms=1 (08 01) }.
        assert_eq!(
            bytes.ok().as_deref(),
            Some(&[0, 0, 0, 6, 0x08, 0x01, 0x62, 0x02, 0x08, 0x01][..])
        );
    }

    #[test]
    fn decode_takes_one_frame_at_a_time() {
        let mut buf = BytesMut::new();
        for id in 1..=3 {
            assert!(encode_frame(&ping(id), DEFAULT_MAX_FRAME_BYTES, &mut buf).is_ok());
        }
        buf.extend_from_slice(&[0, 0]); // start of a fourth frame
        let mut dec = FrameDecoder::default();
        for id in 1..=3 {
            assert_eq!(dec.decode(&mut buf).ok().flatten(), Some(ping(id)));
        }
        assert!(matches!(dec.decode(&mut buf), Ok(None)));
        assert_eq!(&buf[..], &[0, 0], "an incomplete prefix stays in the buffer");
    }

    #[test]
    fn decode_slice_reports_bytes_used_and_leaves_incomplete_frames() {
        let bytes = encode_to_bytes(&ping(9), 64).unwrap_or_default();
        let mut two = bytes.to_vec();
        two.extend_from_slice(&bytes[..bytes.len() - 1]);
        let dec = FrameDecoder::new(64);
        let first = dec.decode_slice(&two);
        assert!(matches!(&first, Ok(Some((env, used))) if *env == ping(9) && *used == bytes.len()));
        assert!(matches!(dec.decode_slice(&two[bytes.len()..]), Ok(None)));
    }

    #[test]
    fn max_of_zero_accepts_only_empty_envelopes() {
        let mut dec = FrameDecoder::new(0);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 0, 0, 0, 1][..]);
        assert_eq!(dec.decode(&mut buf).ok().flatten(), Some(Envelope::default()));
        assert!(matches!(dec.decode(&mut buf), Err(FrameError::TooLarge { len: 1, max: 0 })));
        assert!(matches!(
            encode_to_bytes(&ping(1), 0),
            Err(FrameError::Oversized { len: 6, max: 0 })
        ));
    }
}
