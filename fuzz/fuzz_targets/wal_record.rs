//! Fuzz target: the write-ahead log's segment header and record decoder, scanned in any read size (body in `tern_store::wal::fuzzing::wal_record`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_store::wal::fuzzing::wal_record(data));
