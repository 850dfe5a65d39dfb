//! Fuzz target: protobuf decoding of every message a peer can make us parse (body in `tern_proto::fuzzing::envelope`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_proto::fuzzing::envelope(data));
