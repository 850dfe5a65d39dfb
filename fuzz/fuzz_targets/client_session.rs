//! Fuzz target: the SDK's sans-IO client state machines (inbound order, outbox, heartbeat, backoff) driven by opcodes (body in `tern_proto::fuzzing::client_session`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_proto::fuzzing::client_session(data));
