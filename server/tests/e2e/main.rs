//! End-to-end tests of the `tern` binary and library over real sockets and processes, one test
//! binary (one link, one copy of the dependencies on disk) with a module per area.

mod common;

mod bad_input;
mod chaos;
mod cluster;
mod contract;
mod crash;
mod devices;
mod fuzz_corpus;
mod groups;
mod kernel_tuning;
mod kick;
mod link_auth;
mod messaging;
mod net_chaos;
mod offline_sync;
mod ops;
mod ordering;
mod per_source;
mod power_loss;
mod push;
mod quic;
mod recall;
mod receipts;
mod reconnect;
mod redis_security;
mod session_rules;
mod slow_reader;
mod startup;
mod tls;
mod token;
mod tour;
