//! Fuzz target: one gateway connection's sans-IO state machine driven by a script of reads, pushes, sink room, answers, presence, kicks and time (body in `tern_gateway::fuzzing::connection`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_gateway::fuzzing::connection(data));
