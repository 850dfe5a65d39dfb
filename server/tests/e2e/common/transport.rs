//! The client transports the end-to-end suite runs over: [`Transport`] picks the SDK address
//! scheme and trust, and [`over_transports!`](crate::over_transports) turns one test body
//! `async fn name(t: Transport)` into a `name::tcp`, a `name::tls` and a `name::quic` test.

use std::net::SocketAddr;
use std::path::Path;

/// How an SDK client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP (`tcp://`), the server's client listener.
    Tcp,
    /// TLS 1.3 on TCP (`tls://`), on the same port as plain TCP, trusting the certificate the
    /// server generated in its data directory.
    Tls,
    /// QUIC (`quic://`), the server's UDP socket beside its TCP listener, trusting the
    /// certificate the server generated in its data directory.
    Quic,
}

impl Transport {
    /// The SDK address scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }

    /// The SDK address of a server listening at `addr` (its TCP or QUIC address).
    pub fn sdk_addr(self, addr: SocketAddr) -> String {
        format!("{}://{addr}", self.scheme())
    }

    /// What the SDK trusts for a server whose data directory is `data_dir`.
    pub fn trust(self, data_dir: &Path) -> tern_sdk::Trust {
        match self {
            Transport::Tcp => tern_sdk::Trust::default(),
            Transport::Tls | Transport::Quic => {
                tern_sdk::Trust::CaFile(data_dir.join("tls").join("cert.pem"))
            }
        }
    }
}

/// For each `async fn name(t: Transport)` named, a module `name` with one `#[tokio::test]` per
/// transport (`name::tcp`, `name::tls`, `name::quic`), so `cargo nextest run quic` picks one transport.
#[macro_export]
macro_rules! over_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use $crate::common::Transport;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$name(Transport::Tcp).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$name(Transport::Tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn quic() {
                super::$name(Transport::Quic).await
            }
        }
    )*};
}
