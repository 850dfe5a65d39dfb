//! Fuzz target: request-head routing of the operator HTTP endpoint and the response it builds (body in `tern::fuzzing::http_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern::fuzzing::http_request(data));
