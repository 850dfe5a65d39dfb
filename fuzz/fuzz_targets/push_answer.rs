//! Fuzz target: what APNs, FCM and a webhook answer (status, headers, body) classified by the notifier (body in `tern_notify::fuzzing::push_answer`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_notify::fuzzing::push_answer(data));
