//! Fuzz target: the embedded store's log record decoder (body in `tern_store::embedded::fuzzing::store_record`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_store::embedded::fuzzing::store_record(data));
