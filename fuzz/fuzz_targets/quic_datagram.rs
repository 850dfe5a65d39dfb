//! Fuzz target: QUIC datagrams from a few source addresses, and time passing, fed to the gateway's sans-IO QUIC host under small handshake limits (body in `tern_gateway::fuzzing::quic_datagram`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_gateway::fuzzing::quic_datagram(data));
