//! Fuzz target: JWT parsing and verification at login, plus mint/verify round trips and signature tampering (body in `tern_gateway::fuzzing::token`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_gateway::fuzzing::token(data));
