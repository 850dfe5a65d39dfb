//! Fuzz target: the incremental frame decoder, fed in data-driven chunks (body in `tern_proto::fuzzing::frame_decoder`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_proto::fuzzing::frame_decoder(data));
