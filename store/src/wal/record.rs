//! The write-ahead log's on-disk codec: the segment header and the record frame, sans I/O.
//!
//! Segment header ([`SEGMENT_HEADER`] = 32 bytes, little-endian):
//! `[8 magic "TERNWAL\0"][u32 version = 1][u32 reserved = 0][u64 first lsn][u32 reserved = 0]
//! [u32 crc32c over the 28 bytes before it]`.
//!
//! Record frame ([`FRAME_HEADER`] = 16 bytes, then the payload):
//! `[u32 payload len][u32 crc32c over (lsn, len, payload)][u64 lsn][payload]`. The CRC covers
//! the lsn and the length, so a record copied from elsewhere or a torn length is caught.
//!
//! [`decode`] tells "need more bytes" ([`Stop::Incomplete`]) from "bad bytes" (every other
//! [`Stop`]), and checks the length against [`MAX_PAYLOAD`] before anyone allocates for it.

use std::fmt;

/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER: usize = 32;
/// Bytes before each record's payload.
pub const FRAME_HEADER: usize = 16;
/// The largest payload the log writes or reads (1 GiB): a larger length field is damage.
pub const MAX_PAYLOAD: usize = 1 << 30;
/// The segment header's magic.
pub const MAGIC: [u8; 8] = *b"TERNWAL\0";
/// The segment format version this code writes and reads.
pub const VERSION: u32 = 1;
/// The largest first lsn a segment header may carry (2^62): far beyond any real log, and far
/// enough from `u64::MAX` that lsn arithmetic never overflows.
pub const MAX_LSN: u64 = 1 << 62;

/// The CRC of a frame: crc32c over (lsn, len, payload), each integer little-endian.
fn frame_crc(lsn: u64, len: u32, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&lsn.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &len.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Appends one frame for `lsn` to `buf`: reserves the header, lets `encode` append the
/// payload in place, then fills the header. Returns the payload length, or that length as an
/// error (and leaves `buf` as it was) when it is over [`MAX_PAYLOAD`].
pub fn encode_with(
    buf: &mut Vec<u8>,
    lsn: u64,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<usize, usize> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    encode(buf);
    let payload_len = buf.len() - start - FRAME_HEADER;
    let len = match u32::try_from(payload_len) {
        Ok(len) if payload_len <= MAX_PAYLOAD => len,
        _ => {
            buf.truncate(start);
            return Err(payload_len);
        }
    };
    let crc = frame_crc(lsn, len, &buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf[start + 8..start + 16].copy_from_slice(&lsn.to_le_bytes());
    Ok(payload_len)
}

/// The length of the whole frame that starts at `frame[0]`, read from its length field
/// (for frames this process encoded; `frame` holds at least a header).
pub fn frame_len(frame: &[u8]) -> usize {
    let mut len = [0; 4];
    len.copy_from_slice(&frame[..4]);
    FRAME_HEADER + u32::from_le_bytes(len) as usize
}

/// A valid record at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its log sequence number.
    pub lsn: u64,
    /// Its payload.
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes the record takes on disk, header included.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER + self.payload.len()
    }
}

/// Why decoding stopped before a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Fewer than `need` bytes: the frame (as far as its header can be trusted) is longer
    /// than the buffer. Read more, or at the end of the file, a torn record.
    Incomplete {
        /// Bytes the frame needs, header included.
        need: usize,
    },
    /// The 16 header bytes are all zero: preallocated space, the end of the written log.
    Zero,
    /// The length field is over [`MAX_PAYLOAD`].
    TooLarge {
        /// The length field.
        len: u64,
    },
    /// The CRC does not match: a torn or damaged record.
    BadCrc,
    /// A well-formed record, but not the next lsn: a stale record (e.g. left after a
    /// truncation) or a misplaced one.
    WrongLsn {
        /// The lsn that had to come next.
        expected: u64,
        /// The lsn found.
        found: u64,
    },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Incomplete { need } => write!(f, "incomplete record ({need} bytes needed)"),
            Stop::Zero => write!(f, "zeroed record header"),
            Stop::TooLarge { len } => write!(f, "record length {len} over the limit"),
            Stop::BadCrc => write!(f, "record checksum mismatch"),
            Stop::WrongLsn { expected, found } => {
                write!(f, "record lsn {found} where {expected} was expected")
            }
        }
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Decodes the frame at the start of `buf`, which must carry lsn `expected`.
pub fn decode(buf: &[u8], expected: u64) -> Result<Record<'_>, Stop> {
    if buf.len() < FRAME_HEADER {
        return Err(Stop::Incomplete { need: FRAME_HEADER });
    }
    let header = &buf[..FRAME_HEADER];
    if header.iter().all(|&b| b == 0) {
        return Err(Stop::Zero);
    }
    let len = le_u32(header);
    if len as usize > MAX_PAYLOAD {
        return Err(Stop::TooLarge { len: u64::from(len) });
    }
    let need = FRAME_HEADER + len as usize;
    if buf.len() < need {
        return Err(Stop::Incomplete { need });
    }
    let crc = le_u32(&header[4..]);
    let lsn = le_u64(&header[8..]);
    let payload = &buf[FRAME_HEADER..need];
    if frame_crc(lsn, len, payload) != crc {
        return Err(Stop::BadCrc);
    }
    if lsn != expected {
        return Err(Stop::WrongLsn { expected, found: lsn });
    }
    Ok(Record { lsn, payload })
}

/// The segment header for a segment whose first record has lsn `first_lsn`.
pub fn encode_header(first_lsn: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0; SEGMENT_HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment's first [`SEGMENT_HEADER`] bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A written header: the segment's first lsn.
    Valid {
        /// The lsn of the segment's first record.
        first_lsn: u64,
    },
    /// All zero: a preallocated segment never written to.
    Zero,
    /// Not a header this code wrote.
    Bad(BadHeader),
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHeader {
    /// The file is shorter than a header.
    Short,
    /// Wrong magic.
    Magic,
    /// The CRC does not match.
    Crc,
    /// A version this code does not read.
    Version(u32),
    /// A first lsn of 0 or over [`MAX_LSN`].
    Lsn(u64),
}

impl fmt::Display for BadHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadHeader::Short => write!(f, "segment shorter than its header"),
            BadHeader::Magic => write!(f, "bad segment magic"),
            BadHeader::Crc => write!(f, "segment header checksum mismatch"),
            BadHeader::Version(v) => write!(f, "unknown segment version {v}"),
            BadHeader::Lsn(lsn) => write!(f, "segment first lsn {lsn} out of range"),
        }
    }
}

/// Decodes a segment header from the start of `buf`.
pub fn decode_header(buf: &[u8]) -> Header {
    if buf.len() < SEGMENT_HEADER {
        return if buf.iter().all(|&b| b == 0) {
            Header::Zero
        } else {
            Header::Bad(BadHeader::Short)
        };
    }
    let h = &buf[..SEGMENT_HEADER];
    if h.iter().all(|&b| b == 0) {
        return Header::Zero;
    }
    if crc32c::crc32c(&h[..28]) != le_u32(&h[28..]) {
        return Header::Bad(BadHeader::Crc);
    }
    if h[..8] != MAGIC {
        return Header::Bad(BadHeader::Magic);
    }
    let version = le_u32(&h[8..]);
    if version != VERSION {
        return Header::Bad(BadHeader::Version(version));
    }
    match le_u64(&h[16..]) {
        first_lsn @ 1..=MAX_LSN => Header::Valid { first_lsn },
        lsn => Header::Bad(BadHeader::Lsn(lsn)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_caught() {
        let mut buf = Vec::new();
        assert_eq!(encode_with(&mut buf, 7, |b| b.extend_from_slice(b"hello")), Ok(5));
        assert_eq!(frame_len(&buf), buf.len());
        assert_eq!(decode(&buf, 7), Ok(Record { lsn: 7, payload: b"hello" }));
        assert_eq!(decode(&buf, 8), Err(Stop::WrongLsn { expected: 8, found: 7 }));
        assert_eq!(decode(&buf[..buf.len() - 1], 7), Err(Stop::Incomplete { need: buf.len() }));
        assert_eq!(decode(&buf[..3], 7), Err(Stop::Incomplete { need: FRAME_HEADER }));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, 7).is_err(), "flipped byte {i} went unnoticed");
        }
        assert_eq!(decode(&[0; 20], 1), Err(Stop::Zero));
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge, 7), Err(Stop::TooLarge { len: u64::from(u32::MAX) }));
    }

    #[test]
    fn headers_round_trip_and_damage_is_caught() {
        let h = encode_header(42);
        assert_eq!(decode_header(&h), Header::Valid { first_lsn: 42 });
        assert_eq!(decode_header(&[0; SEGMENT_HEADER]), Header::Zero);
        assert_eq!(decode_header(&h[..10]), Header::Bad(BadHeader::Short));
        for i in 0..SEGMENT_HEADER {
            let mut bad = h;
            bad[i] ^= 1;
            assert!(matches!(decode_header(&bad), Header::Bad(_)), "flipped byte {i}");
        }
    }
}
