//! Fuzz target: the server session state machine, driven by frames and clock ticks (body in `tern_proto::fuzzing::server_session`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_proto::fuzzing::server_session(data));
