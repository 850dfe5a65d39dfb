//! How a bot reaches the gateway: plain TCP (a raw `TcpStream`, read with `try_read` into a
//! stack buffer so an idle bot owns no buffer) or QUIC (quinn: one client-opened bidirectional
//! stream, ALPN `tern/1`, the same frames). QUIC bots share one quinn endpoint (one UDP socket)
//! per source IP; `--quic-percent` picks which bots use it, so one run can mix transports.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// ALPN of Tern over QUIC.
const ALPN: &[u8] = b"tern/1";

/// The QUIC client setup failed (the CA file, TLS).
#[derive(Debug, thiserror::Error)]
#[error("QUIC bots: {0}")]
pub struct QuicSetupError(String);

fn setup(e: impl std::fmt::Display) -> QuicSetupError {
    QuicSetupError(e.to_string())
}

/// What QUIC bots need: the client configuration and one endpoint per source IP.
pub struct QuicClients {
    config: quinn::ClientConfig,
    endpoints: Mutex<HashMap<Option<IpAddr>, quinn::Endpoint>>,
}

impl QuicClients {
    /// QUIC clients trusting the CA (or self-signed certificate) in `ca_file`, with a
    /// keep-alive of `keep_alive` (the bots' heartbeat keeps the session alive on its own).
    pub fn new(ca_file: &Path, keep_alive: Option<Duration>) -> Result<Self, QuicSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| setup(format!("{}: {e}", ca_file.display())))?;
        for cert in certs {
            roots.add(cert.map_err(setup)?).map_err(setup)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(setup)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut t = quinn::TransportConfig::default();
        // quinn's default idle timeout (30 s) would race a 30 s heartbeat: ask for more and let
        // the server's (90 s by default) apply.
        let idle = quinn::IdleTimeout::try_from(Duration::from_secs(300)).map_err(setup)?;
        t.keep_alive_interval(keep_alive)
            .max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .datagram_receive_buffer_size(None);
        config.transport_config(Arc::new(t));
        Ok(Self { config, endpoints: Mutex::new(HashMap::new()) })
    }

    fn endpoint(&self, source: Option<IpAddr>, v6: bool) -> io::Result<quinn::Endpoint> {
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = eps.get(&source) {
            return Ok(ep.clone());
        }
        let any = if v6 {
            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        let ip = source.unwrap_or(any);
        let ep = quinn::Endpoint::client(SocketAddr::new(ip, 0))?;
        eps.insert(source, ep.clone());
        Ok(ep)
    }
}

impl std::fmt::Debug for QuicClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicClients").finish_non_exhaustive()
    }
}

/// A bot's connection.
pub enum BotStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A QUIC connection and its one stream.
    Quic { _conn: quinn::Connection, tx: quinn::SendStream, rx: quinn::RecvStream },
}

/// What woke a bot's read side.
pub enum Readable<'a> {
    /// The TCP socket is readable: `try_read` it.
    Tcp(&'a TcpStream),
    /// Bytes from the QUIC stream (`None`: the server finished it).
    Quic(Option<bytes::Bytes>),
}

impl BotStream {
    /// Connects to `addr` from `source` (if any): TCP with TCP_NODELAY, or QUIC when `quic`.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        quic: Option<&QuicClients>,
    ) -> io::Result<Self> {
        match quic {
            None => {
                let socket =
                    if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                if let Some(ip) = source {
                    socket.bind(SocketAddr::new(ip, 0))?;
                }
                socket.set_nodelay(true)?;
                Ok(BotStream::Tcp(socket.connect(addr).await?))
            }
            Some(q) => {
                let ep = q.endpoint(source, addr.is_ipv6())?;
                let err = |e: &dyn std::fmt::Display| io::Error::other(format!("QUIC: {e}"));
                let conn = ep
                    .connect_with(q.config.clone(), addr, "localhost")
                    .map_err(|e| err(&e))?
                    .await
                    .map_err(|e| err(&e))?;
                let (tx, rx) = conn.open_bi().await.map_err(|e| err(&e))?;
                Ok(BotStream::Quic { _conn: conn, tx, rx })
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            BotStream::Tcp(s) => s.write_all(data).await,
            BotStream::Quic { tx, .. } => tx.write_all(data).await.map_err(io::Error::other),
        }
    }

    /// Waits until there is something to read.
    pub async fn readable(&mut self, max: usize) -> io::Result<Readable<'_>> {
        match self {
            BotStream::Tcp(s) => {
                s.readable().await?;
                Ok(Readable::Tcp(s))
            }
            BotStream::Quic { rx, .. } => match rx.read_chunk(max, true).await {
                Ok(chunk) => Ok(Readable::Quic(chunk.map(|c| c.bytes))),
                Err(e) => Err(io::Error::other(e)),
            },
        }
    }
}
