//! Gateway addresses and how to reach them. An address is `tcp://host:port`,
//! `tls://host:port`, `quic://host:port`, or a bare `host:port` (plain TCP); several are
//! comma-separated. Each attempt starts at a random address of each transport (clients spread
//! over gateways) and moves on to the next when one fails. When the list holds QUIC and TCP or
//! TLS addresses, QUIC goes first and the stream transports start [`ClientConfig::
//! happy_eyeballs_delay`] later unless QUIC has succeeded by then; the first to finish its
//! handshake wins and the other is dropped (RFC 8305 style), so a network that blocks UDP
//! costs one delay, not a timeout.
//!
//! The dialer lives as long as the client: its QUIC endpoint (one UDP socket) and its TLS
//! configuration keep session tickets, so a reconnect resumes the TLS session and, over QUIC,
//! sends its Login in 0-RTT data.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

use super::trust::tls_config;
use super::{ReadHalf, WriteHalf};
use crate::config::ClientConfig;
use crate::error::SdkError;

/// ALPN of Tern over QUIC and TLS.
pub const ALPN: &[u8] = b"tern/1";

/// Keep-alive a QUIC client sends while idle: below the 30 s after which many mobile NATs
/// forget a UDP binding.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(25);

/// Which transport an address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain TCP (`tcp://` or no scheme).
    Tcp,
    /// TLS 1.3 over TCP (`tls://`).
    Tls,
    /// QUIC (`quic://`).
    Quic,
}

/// One parsed address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: Scheme,
    /// `host:port` as given.
    authority: String,
    /// The host part (for SNI and certificate checks).
    host: String,
}

fn parse(list: &str) -> Result<Vec<Target>, SdkError> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let (scheme, rest) = match raw.split_once("://") {
            None => (Scheme::Tcp, raw),
            Some(("tcp", r)) => (Scheme::Tcp, r),
            Some(("tls", r)) => (Scheme::Tls, r),
            Some(("quic", r)) => (Scheme::Quic, r),
            Some((other, _)) => {
                return Err(SdkError::InvalidArgument(format!(
                    "unknown scheme {other:?} in {raw:?} (tcp://, tls:// or quic://)"
                )));
            }
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(SdkError::InvalidArgument(format!("{raw:?} has no :port")));
        };
        if port.parse::<u16>().is_err() || host.is_empty() {
            return Err(SdkError::InvalidArgument(format!("{raw:?} is not host:port")));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        out.push(Target { scheme, authority: rest.to_owned(), host });
    }
    if out.is_empty() {
        return Err(SdkError::InvalidArgument("no server address configured".to_owned()));
    }
    Ok(out)
}

/// An opened transport, before Login.
pub(crate) struct Opened {
    pub(crate) scheme: Scheme,
    pub(crate) reader: ReadHalf,
    pub(crate) writer: WriteHalf,
    /// The QUIC connection of a QUIC stream.
    pub(crate) quic: Option<quinn::Connection>,
    /// For a QUIC connection opened in 0-RTT: resolves to whether the server accepted the
    /// early data.
    pub(crate) zero_rtt: Option<quinn::ZeroRttAccepted>,
}

/// Opens transports to the configured gateways. See the module doc.
pub(crate) struct Dialer {
    targets: Vec<Target>,
    delay: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    quic_config: Option<quinn::ClientConfig>,
    /// Created at the first QUIC attempt (one per address family), kept for resumption.
    endpoints: Mutex<Vec<quinn::Endpoint>>,
}

impl Dialer {
    /// A dialer for `cfg.addr` with `cfg.trust`; fails on a malformed address or trust setting.
    pub(crate) fn new(cfg: &ClientConfig) -> Result<Self, SdkError> {
        let targets = parse(&cfg.addr)?;
        let secure = targets.iter().any(|t| t.scheme != Scheme::Tcp);
        let tls = if secure { Some(Arc::new(tls_config(&cfg.trust)?)) } else { None };
        let quic_config = match &tls {
            Some(tls) if targets.iter().any(|t| t.scheme == Scheme::Quic) => {
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.clone())
                    .map_err(|e| SdkError::InvalidArgument(format!("TLS for QUIC: {e}")))?;
                let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
                let mut transport = quinn::TransportConfig::default();
                // quinn's default idle timeout is 30 s; the server's (90 s by default) should
                // decide, so ask for more.
                let idle = quinn::IdleTimeout::try_from(Duration::from_secs(300))
                    .map_err(|e| SdkError::InvalidArgument(format!("QUIC idle timeout: {e}")))?;
                transport
                    .keep_alive_interval(Some(QUIC_KEEP_ALIVE))
                    .max_idle_timeout(Some(idle))
                    .max_concurrent_bidi_streams(0u32.into())
                    .max_concurrent_uni_streams(0u32.into())
                    .datagram_receive_buffer_size(None);
                qc.transport_config(Arc::new(transport));
                Some(qc)
            }
            _ => None,
        };
        Ok(Self {
            targets,
            delay: cfg.happy_eyeballs_delay,
            tls,
            quic_config,
            endpoints: Mutex::new(Vec::new()),
        })
    }

    /// Opens the first transport that works: QUIC addresses first, the others after the head
    /// start (see the module doc).
    pub(crate) async fn open(&self) -> Result<Opened, SdkError> {
        let quic: Vec<&Target> = self.targets.iter().filter(|t| t.scheme == Scheme::Quic).collect();
        let stream: Vec<&Target> =
            self.targets.iter().filter(|t| t.scheme != Scheme::Quic).collect();
        match (quic.is_empty(), stream.is_empty()) {
            (false, true) => self.first_of(&quic).await,
            (true, _) => self.first_of(&stream).await,
            (false, false) => {
                let q = self.first_of(&quic);
                let s = async {
                    tokio::time::sleep(self.delay).await;
                    self.first_of(&stream).await
                };
                tokio::pin!(q, s);
                // Whichever succeeds first; if one fails, wait for the other.
                tokio::select! {
                    r = &mut q => match r { Ok(o) => Ok(o), Err(_) => s.await },
                    r = &mut s => match r { Ok(o) => Ok(o), Err(_) => q.await },
                }
            }
        }
    }

    /// Tries `targets` from a random one onwards; the first that opens.
    async fn first_of(&self, targets: &[&Target]) -> Result<Opened, SdkError> {
        let start = fastrand::usize(..targets.len());
        let mut last = None;
        for i in 0..targets.len() {
            let t = targets[(start + i) % targets.len()];
            match self.open_one(t).await {
                Ok(o) => return Ok(o),
                Err(e) => {
                    tracing::debug!(addr = %t.authority, scheme = ?t.scheme, error = %e, "connect failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(SdkError::Closed))
    }

    async fn open_one(&self, t: &Target) -> Result<Opened, SdkError> {
        match t.scheme {
            Scheme::Tcp => {
                let s = TcpStream::connect(&t.authority).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok(Opened {
                    scheme: Scheme::Tcp,
                    reader: Box::new(r),
                    writer: Box::new(w),
                    quic: None,
                    zero_rtt: None,
                })
            }
            Scheme::Tls => {
                let tls = self.tls.clone().ok_or(SdkError::Closed)?;
                let s = TcpStream::connect(&t.authority).await?;
                s.set_nodelay(true)?;
                let name = server_name(&t.host)?;
                let stream = tokio_rustls::TlsConnector::from(tls).connect(name, s).await?;
                let (r, w) = tokio::io::split(stream);
                Ok(Opened {
                    scheme: Scheme::Tls,
                    reader: Box::new(r),
                    writer: Box::new(w),
                    quic: None,
                    zero_rtt: None,
                })
            }
            Scheme::Quic => self.open_quic(t).await,
        }
    }

    async fn open_quic(&self, t: &Target) -> Result<Opened, SdkError> {
        let cfg = self.quic_config.clone().ok_or(SdkError::Closed)?;
        let addr = resolve(&t.authority).await?;
        let endpoint = self.endpoint_for(addr)?;
        let connecting = endpoint.connect_with(cfg, addr, &t.host).map_err(|e| {
            SdkError::Io(std::io::Error::other(format!("QUIC connect to {}: {e}", t.authority)))
        })?;
        let (conn, zero_rtt) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => (conn, Some(accepted)),
            Err(connecting) => (connecting.await.map_err(quic_error)?, None),
        };
        let (tx, rx) = conn.open_bi().await.map_err(quic_error)?;
        Ok(Opened {
            scheme: Scheme::Quic,
            reader: Box::new(rx),
            writer: Box::new(tx),
            quic: Some(conn),
            zero_rtt,
        })
    }

    /// The client's QUIC endpoint for `addr`'s family, bound at first use.
    fn endpoint_for(&self, addr: SocketAddr) -> Result<quinn::Endpoint, SdkError> {
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let family = |ep: &quinn::Endpoint| ep.local_addr().map(|a| a.is_ipv6()).ok();
        if let Some(ep) = eps.iter().find(|ep| family(ep) == Some(addr.is_ipv6())) {
            return Ok(ep.clone());
        }
        let local: SocketAddr = if addr.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }
            .map_err(|_| SdkError::Closed)?;
        let ep = quinn::Endpoint::client(local)?;
        eps.push(ep.clone());
        Ok(ep)
    }

    /// Moves the client's QUIC sockets to new local ports (what a phone does when it changes
    /// networks): open connections migrate, the server sees them come from the new address.
    pub(crate) fn rebind(&self) -> Result<(), SdkError> {
        let eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        for ep in eps.iter() {
            let local = ep.local_addr()?;
            let any = SocketAddr::new(local.ip(), 0);
            ep.rebind(std::net::UdpSocket::bind(any)?)?;
        }
        Ok(())
    }
}

async fn resolve(authority: &str) -> Result<SocketAddr, SdkError> {
    let mut addrs = tokio::net::lookup_host(authority).await?;
    addrs.next().ok_or_else(|| {
        SdkError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{authority} resolves to nothing"),
        ))
    })
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, SdkError> {
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| SdkError::InvalidArgument(format!("{host:?} is not a valid server name")))
}

/// A QUIC failure as an I/O error of the client.
pub(crate) fn quic_error(e: impl std::fmt::Display) -> SdkError {
    SdkError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, format!("QUIC: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_schemes() {
        let t = parse("127.0.0.1:7400, quic://chat.example.com:7400,tls://[::1]:7443").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].scheme, t[0].host.as_str()), (Scheme::Tcp, "127.0.0.1"));
        assert_eq!((t[1].scheme, t[1].host.as_str()), (Scheme::Quic, "chat.example.com"));
        assert_eq!(
            (t[2].scheme, t[2].host.as_str(), t[2].authority.as_str()),
            (Scheme::Tls, "::1", "[::1]:7443")
        );
        assert_eq!(parse("tcp://h:1").unwrap()[0].scheme, Scheme::Tcp);
        for bad in ["", " , ", "http://h:1", "quic://h", "h:notaport", ":7400"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
