//! Fuzz target: the link handshake machines of both sides (body in `tern_proto::fuzzing::link_handshake`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_proto::fuzzing::link_handshake(data));
