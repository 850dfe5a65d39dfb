//! Fuzz body of the `wal_record` target (`fuzz/fuzz_targets/wal_record.rs`), also replayed on
//! stable by `store/tests/fuzz_corpus.rs`.

use std::io::Read;

use super::record::{self, Header, SEGMENT_HEADER};
use super::segment::{self, ScanEnd};

/// A reader that hands out at most `max` bytes per `read`, to check that the scan does not
/// depend on how the file arrives.
struct Chunky<'a> {
    data: &'a [u8],
    max: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.max).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn scan(data: &[u8], first_lsn: u64, max: usize) -> (ScanEnd, Vec<(u64, Vec<u8>)>) {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let end = segment::scan(Chunky { data, max }, data.len() as u64, first_lsn, &mut buf, |r| {
        records.push((r.lsn, r.payload.to_vec()));
        Ok::<_, ()>(())
    });
    match end {
        Ok(end) => (end, records),
        Err(_) => panic!("scanning a byte slice cannot fail"),
    }
}

/// The input's first byte picks the read size (1..=64 bytes, or everything at once); the rest
/// is a segment file (header, then records). Checks: the header decodes without panicking and
/// a valid one re-encodes to the same bytes; the scan gives the same result whatever the read
/// size; the records it accepts carry consecutive lsns from the header's and re-encode to
/// exactly the bytes they came from; a clean end is followed by zeros only, and a torn one by
/// bytes that do not decode as the next record.
pub fn wal_record(data: &[u8]) {
    let Some((&mode, file)) = data.split_first() else { return };
    let header = record::decode_header(file);
    let first_lsn = match header {
        Header::Valid { first_lsn } => {
            assert_eq!(record::encode_header(first_lsn)[..], file[..SEGMENT_HEADER]);
            first_lsn
        }
        Header::Zero | Header::Bad(_) => 1,
    };
    let body = file.get(SEGMENT_HEADER..).unwrap_or(&[]);
    let (end, records) = scan(body, first_lsn, usize::MAX);
    let max = if mode == 0 { usize::MAX } else { 1 + usize::from(mode & 63) };
    assert_eq!(scan(body, first_lsn, max), (end.clone(), records.clone()));

    let mut reencoded = Vec::new();
    for (i, (lsn, payload)) in records.iter().enumerate() {
        assert_eq!(*lsn, first_lsn + i as u64);
        let ok = record::encode_with(&mut reencoded, *lsn, |b| b.extend_from_slice(payload));
        assert!(ok.is_ok());
    }
    assert_eq!(end.next_lsn, first_lsn + records.len() as u64);
    let valid = usize::try_from(end.valid_bytes).unwrap_or(usize::MAX);
    assert_eq!(body.get(..valid), Some(&reencoded[..]));
    let rest = &body[valid..];
    match end.torn {
        None => assert!(rest.iter().all(|&b| b == 0)),
        Some(_) => assert!(record::decode(rest, end.next_lsn).is_err()),
    }
}
