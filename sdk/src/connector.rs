//! [`Connector`]: opens logged-in connections the way a [`crate::Client`] does (the same
//! dialer, so the same session tickets, TLS resumption and QUIC 0-RTT), one at a time and
//! without a client's state, for tools that measure connection setup: the load tester's
//! reconnect-time table, say. Apps use [`crate::Client`].

use tern_proto::v1;

use crate::config::ClientConfig;
use crate::error::SdkError;
use crate::transport::{Dialer, Scheme, Transport};

/// Opens logged-in connections to `cfg.addr` with `cfg.token`. Every connection after the
/// first resumes the TLS session of an earlier one when it can (over QUIC, with the Login in
/// 0-RTT data), as a client's reconnects do.
pub struct Connector {
    cfg: ClientConfig,
    dialer: Dialer,
}

/// A connection [`Connector::connect`] opened and logged in.
pub struct Connected {
    /// The transport it uses.
    pub scheme: Scheme,
    /// The server's answer to Login.
    pub login_ok: v1::LoginOk,
    /// Whether the Login went in QUIC 0-RTT data and the server accepted it.
    pub zero_rtt: bool,
    transport: Transport,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("scheme", &self.scheme)
            .field("zero_rtt", &self.zero_rtt)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `cfg`; fails on a malformed address or trust setting.
    pub fn new(cfg: ClientConfig) -> Result<Self, SdkError> {
        let dialer = Dialer::new(&cfg)?;
        Ok(Self { cfg, dialer })
    }

    /// Opens a connection, logs in and waits for LoginOk (bounded by `cfg.request_timeout`).
    pub async fn connect(&self) -> Result<Connected, SdkError> {
        let (transport, login_ok) =
            Transport::connect(&self.dialer, &self.cfg, self.cfg.token.clone()).await?;
        Ok(Connected {
            scheme: transport.scheme,
            zero_rtt: transport.zero_rtt,
            login_ok,
            transport,
        })
    }
}

impl Connected {
    /// Ends the connection: the write side is shut down (TCP FIN, TLS close_notify, QUIC
    /// stream finish), then the transport is dropped.
    pub async fn close(self) {
        self.transport.shutdown().await;
    }
}
