//! `tokio_util::codec` adapters over the sans-IO [`crate::codec`], for `Framed` transports.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{FrameDecoder, encode_frame};
use crate::error::FrameError;
use crate::v1::Envelope;

/// `Framed` codec for [`Envelope`] frames with a maximum frame size.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeCodec {
    decoder: FrameDecoder,
}

impl EnvelopeCodec {
    /// A codec that rejects frames larger than `max_frame_bytes` in both directions.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { decoder: FrameDecoder::new(max_frame_bytes) }
    }
}

/// The error `Framed` needs: a codec error or an I/O error.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes were not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for EnvelopeCodec {
    type Item = Envelope;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }
}

impl Encoder<&Envelope> for EnvelopeCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode_frame(item, self.decoder.max_frame_bytes(), dst)?)
    }
}
