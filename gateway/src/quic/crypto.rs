//! The TLS side of the gateway's QUIC connections: rustls while the handshake runs, then only
//! what a connection needs for the rest of its life, the 1-RTT key schedule.
//!
//! quinn-proto's own session (`quinn_proto::crypto::rustls::TlsSession`) keeps the whole rustls
//! connection (handshake state, record layer, buffers: ~3 KB) for as long as the QUIC
//! connection lives, and quinn derives the next key phase's packet keys (two AES-GCM keys with
//! their tables, ~1.1 KB) as soon as the handshake ends, although most connections never update
//! their keys. For a million idle phones that is gigabytes. [`ServerCrypto`] starts a
//! [`ServerSession`] that:
//!
//! - drops the rustls connection once the handshake is over and its last message (the session
//!   ticket) has been handed to quinn; what is left is the [`Secrets`] to derive key updates
//!   from, the ALPN and the SNI name. A client may send no TLS message after the handshake in
//!   QUIC (RFC 9001 §4.1.3, §6: no KeyUpdate, no post-handshake authentication), so any later
//!   CRYPTO data is answered with TLS's `unexpected_message`, as rustls itself would;
//! - hands quinn the next key phase's keys as [`LazyKey`]s, derived from the secrets the first
//!   time a packet needs them (a key update by either side).
//!
//! Initial keys, Retry tags and the handshake itself are rustls's and quinn's, unchanged.
//! Exporting keying material after the handshake is not supported (the gateway never does).

use std::any::Any;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;
use quinn_proto::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn_proto::crypto::{
    self, CryptoError, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey,
    UnsupportedVersion,
};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, TransportErrorCode};
use rustls::quic::{KeyChange, PacketKeySet, Secrets, ServerConnection, Suite, Version};

use super::config::QuicConfigError;

/// TLS's `unexpected_message` alert, as a QUIC CRYPTO_ERROR (RFC 9001 §4.8).
const UNEXPECTED_MESSAGE: u8 = 10;

/// The server side of QUIC's TLS for the gateway (see the module doc).
pub struct ServerCrypto {
    tls: Arc<rustls::ServerConfig>,
    /// Initial keys and Retry tags: quinn's, as the RFC defines them.
    quinn: QuicServerConfig,
    /// The suite Initial packets are protected with (TLS_AES_128_GCM_SHA256).
    initial: Suite,
}

impl ServerCrypto {
    /// Wrap `tls`, which must allow TLS 1.3 with TLS_AES_128_GCM_SHA256 (QUIC's Initial suite).
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Result<Self, QuicConfigError> {
        let quinn = QuicServerConfig::try_from(tls.clone())?;
        let initial = tls
            .crypto_provider()
            .cipher_suites
            .iter()
            .filter(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            .find_map(|s| s.tls13()?.quic_suite())
            .ok_or(QuicConfigError::NoInitialSuite)?;
        Ok(Self { tls, quinn, initial })
    }
}

impl crypto::ServerConfig for ServerCrypto {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.quinn.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.quinn.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        // quinn starts a session only for a version `initial_keys` accepted.
        let version = match version {
            0xff00_001d..=0xff00_0020 => Version::V1Draft,
            _ => Version::V1,
        };
        let mut encoded = Vec::new();
        params.write(&mut encoded);
        let state = match ServerConnection::new(self.tls.clone(), version, encoded) {
            Ok(tls) => State::Handshake { tls: Box::new(tls), announced: false },
            Err(e) => State::Failed(e.to_string()),
        };
        Box::new(ServerSession { version, initial: self.initial, state, next: None })
    }
}

/// One connection's TLS: see the module doc.
pub struct ServerSession {
    version: Version,
    initial: Suite,
    state: State,
    /// The key schedule for key updates, from the moment the 1-RTT keys exist.
    next: Option<KeyUpdates>,
}

enum State {
    /// rustls is running the handshake; `announced` once quinn was told the ALPN and SNI.
    Handshake { tls: Box<ServerConnection>, announced: bool },
    /// The handshake is over and rustls is gone.
    Done { alpn: Option<Box<[u8]>>, server_name: Option<Box<str>> },
    /// rustls refused to start (a configuration QUIC cannot use): the handshake fails.
    Failed(String),
}

impl ServerSession {
    /// Whether the rustls connection has been dropped (the handshake is over).
    pub fn is_lean(&self) -> bool {
        matches!(self.state, State::Done { .. })
    }

    fn tls_error(tls: &ServerConnection, e: rustls::Error) -> TransportError {
        match tls.alert() {
            Some(alert) => error(TransportErrorCode::crypto(alert.into()), e.to_string()),
            None => error(TransportErrorCode::PROTOCOL_VIOLATION, format!("TLS error: {e}")),
        }
    }
}

impl crypto::Session for ServerSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        boxed(self.initial.keys(dst_cid, side.into(), self.version))
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let (protocol, server_name) = match &self.state {
            State::Handshake { tls, announced: true } => {
                (tls.alpn_protocol().map(<[u8]>::to_vec), tls.server_name().map(str::to_owned))
            }
            State::Done { alpn, server_name } => {
                (alpn.as_deref().map(<[u8]>::to_vec), server_name.as_deref().map(str::to_owned))
            }
            _ => return None,
        };
        Some(Box::new(HandshakeData { protocol, server_name }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        // The gateway asks for no client certificates; clients prove who they are with tokens.
        None
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        let State::Handshake { tls, .. } = &self.state else { return None };
        let keys = tls.zero_rtt_keys()?;
        Some((Box::new(keys.header), Box::new(keys.packet)))
    }

    fn early_data_accepted(&self) -> Option<bool> {
        None // a client's question
    }

    fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Handshake { tls, .. } => tls.is_handshaking(),
            State::Done { .. } => false,
            State::Failed(_) => true,
        }
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let (tls, announced) = match &mut self.state {
            State::Handshake { tls, announced } => (tls, announced),
            State::Done { .. } => {
                let code = TransportErrorCode::crypto(UNEXPECTED_MESSAGE);
                return Err(error(code, "TLS message after the handshake".into()));
            }
            State::Failed(reason) => {
                return Err(error(TransportErrorCode::INTERNAL_ERROR, reason.clone()));
            }
        };
        tls.read_hs(buf).map_err(|e| Self::tls_error(tls, e))?;
        // rustls has no signal for "ClientHello read": ALPN or SNI known, or the handshake
        // over, is when quinn may look at them (as quinn's own session does).
        if !*announced
            && (tls.alpn_protocol().is_some()
                || tls.server_name().is_some()
                || !tls.is_handshaking())
        {
            *announced = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        // quinn asks the server once, when the client's Initial has been read.
        let State::Handshake { tls, .. } = &self.state else { return Ok(None) };
        match tls.quic_transport_parameters() {
            None => Ok(None),
            Some(mut buf) => Ok(Some(TransportParameters::read(Side::Server, &mut buf)?)),
        }
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let State::Handshake { tls, .. } = &mut self.state else { return None };
        let before = buf.len();
        let keys = match tls.write_hs(buf) {
            Some(KeyChange::Handshake { keys }) => keys,
            Some(KeyChange::OneRtt { keys, next }) => {
                self.next = Some(KeyUpdates::new(next, &*keys.local.packet));
                keys
            }
            None => {
                if buf.len() == before && !tls.is_handshaking() {
                    // Everything rustls had to say (the session ticket last) is with quinn.
                    self.state = State::Done {
                        alpn: tls.alpn_protocol().map(Into::into),
                        server_name: tls.server_name().map(Into::into),
                    };
                }
                return None;
            }
        };
        Some(boxed(keys))
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.next.as_mut().map(KeyUpdates::next_pair)
    }

    fn is_valid_retry(&self, _: &ConnectionId, _: &[u8], _: &[u8]) -> bool {
        false // servers send Retry packets, they do not receive them
    }

    fn export_keying_material(
        &self,
        _: &mut [u8],
        _: &[u8],
        _: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        // The exporter secret goes with rustls at the end of the handshake; the gateway never
        // exports keying material.
        Err(ExportKeyingMaterialError)
    }
}

fn error(code: TransportErrorCode, reason: String) -> TransportError {
    TransportError { code, frame: None, reason }
}

/// The 1-RTT key schedule: each call of [`KeyUpdates::next_pair`] hands out the next key
/// phase's keys, derived only when a packet first needs them.
struct KeyUpdates {
    secrets: Arc<Mutex<Secrets>>,
    /// The last pair handed out: it must take its keys from `secrets` before the next pair does.
    last: Option<Arc<LazyPair>>,
    limits: Limits,
}

/// What quinn asks of a key without using it, the same for every phase of one suite.
#[derive(Clone, Copy)]
struct Limits {
    tag_len: usize,
    confidentiality: u64,
    integrity: u64,
}

impl KeyUpdates {
    fn new(secrets: Secrets, current: &dyn rustls::quic::PacketKey) -> Self {
        let limits = Limits {
            tag_len: current.tag_len(),
            confidentiality: current.confidentiality_limit(),
            integrity: current.integrity_limit(),
        };
        Self { secrets: Arc::new(Mutex::new(secrets)), last: None, limits }
    }

    fn next_pair(&mut self) -> KeyPair<Box<dyn PacketKey>> {
        // Phases are derived in order from one schedule: settle the previous one first.
        if let Some(last) = self.last.take() {
            last.keys();
        }
        let pair = Arc::new(LazyPair {
            secrets: self.secrets.clone(),
            keys: OnceLock::new(),
            limits: self.limits,
        });
        self.last = Some(pair.clone());
        KeyPair {
            local: Box::new(LazyKey { pair: pair.clone(), local: true }),
            remote: Box::new(LazyKey { pair, local: false }),
        }
    }
}

/// One key phase's two packet keys, derived on first use.
struct LazyPair {
    secrets: Arc<Mutex<Secrets>>,
    keys: OnceLock<PacketKeySet>,
    limits: Limits,
}

impl LazyPair {
    fn keys(&self) -> &PacketKeySet {
        self.keys.get_or_init(|| {
            // A panic while deriving would leave the secrets as they were: still usable.
            let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
            secrets.next_packet_keys()
        })
    }
}

/// One direction of a [`LazyPair`], as quinn's packet key.
pub struct LazyKey {
    pair: Arc<LazyPair>,
    local: bool,
}

impl LazyKey {
    // quinn implements its `PacketKey` for the boxed rustls key, so the box is the useful type.
    #[allow(clippy::borrowed_box)]
    fn key(&self) -> &Box<dyn rustls::quic::PacketKey> {
        let keys = self.pair.keys();
        if self.local { &keys.local } else { &keys.remote }
    }

    /// Whether this key phase's keys have been derived yet.
    pub fn is_derived(&self) -> bool {
        self.pair.keys.get().is_some()
    }
}

impl PacketKey for LazyKey {
    fn encrypt(&self, packet: u64, buf: &mut [u8], header_len: usize) {
        self.key().encrypt(packet, buf, header_len)
    }

    fn decrypt(
        &self,
        packet: u64,
        header: &[u8],
        payload: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        self.key().decrypt(packet, header, payload)
    }

    fn tag_len(&self) -> usize {
        self.pair.limits.tag_len
    }

    fn confidentiality_limit(&self) -> u64 {
        self.pair.limits.confidentiality
    }

    fn integrity_limit(&self) -> u64 {
        self.pair.limits.integrity
    }
}

/// rustls's keys of one packet space as quinn's boxed key pairs.
fn boxed(keys: rustls::quic::Keys) -> Keys {
    Keys {
        header: KeyPair {
            local: Box::new(keys.local.header),
            remote: Box::new(keys.remote.header),
        },
        packet: KeyPair {
            local: Box::new(keys.local.packet),
            remote: Box::new(keys.remote.packet),
        },
    }
}

#[cfg(test)]
#[path = "crypto_tests.rs"]
mod tests;
