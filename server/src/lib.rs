//! The `tern` binary's library: configuration layering, process wiring and the operator and
//! developer commands. The only crate that uses `anyhow`.
//!
//! - [`config`]: TOML file → environment → flags.
//! - [`env_check`]: warnings about `TERN_*` variables that name no key.
//! - [`embedded`]: `tern serve`, gateway + dispatch + embedded store in one process.
//! - [`cluster`]: `tern gateway` and `tern dispatch`, the distributed mode.
//! - [`push`]: offline push (`[notify]`), started in both modes when a provider is set.
//! - [`http`]: `/metrics`, `/healthz` and `/readyz`.
//! - [`health`]: what `/healthz` and `/readyz` answer (lifecycle phase, dependency checks).
//! - [`chat`]: `tern chat`, a terminal chat client on the SDK.
//! - [`bench`]: `tern bench`, an end-to-end load run through a server.
//! - [`quic`]: the client listeners' QUIC side (`server.quic_listen`, the `[tls]` identity).

pub mod bench;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod embedded;
pub mod env_check;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod keys;
pub mod push;
pub mod quic;
pub mod tls;
