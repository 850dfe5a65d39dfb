//! The `quic_datagram` fuzz body: datagrams from a few source addresses, and time passing,
//! fed to one [`QuicHost`] with small handshake limits; plus the fixed certificate it serves
//! and a deterministic real client Initial ([`client_initial`]) for the seeds.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{ClientConfig, ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig};
use rustls::crypto::{ActiveKeyExchange, CryptoProvider, SecureRandom, SharedSecret};
use rustls::crypto::{GetRandomFailed, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{Error as TlsError, NamedGroup};

use crate::quic::config::{self, CID_LEN, QuicSettings, endpoint_of};
use crate::quic::{HandshakeLimits, QuicHost};

/// The self-signed certificate (P-256, CN and SAN `localhost`, valid until 2126) the fuzzed
/// host serves. Fixed, so that every run serves the same one.
pub const FUZZ_QUIC_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBljCCATugAwIBAgIUQyzbI+MpQ/D9reKzjCv/tHMEq7EwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMjE4MTkzMloYDzIxMjYxMTA4
MTgxOTMyWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASpLltYKtPad9F6RWG+FHylBCPc7oA6YuZqC4aD9EgsCwcmKLiXrq1C
tM/S3jLXz7qwm8V5ExTFXLgFjqrUwUNno2kwZzAdBgNVHQ4EFgQUrQHs75tYMHOb
k9b0yb666YQLHvIwHwYDVR0jBBgwFoAUrQHs75tYMHObk9b0yb666YQLHvIwDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SQAwRgIhAPNIzdIEqneUcUe8M2ZOTyfiDvvelSWlEZyzig/5cXS0AiEAi9Z+gMJN
ctVJVy+Z7hYdbrt+lhNTcfUQu9zjGbvSCK0=
-----END CERTIFICATE-----
";

/// The private key of [`FUZZ_QUIC_CERT_PEM`] (PKCS#8). Only ever used by fuzzing and tests.
pub const FUZZ_QUIC_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVekFbPxKh9DjQBlv
LhWywgE4EWP1t3mRRmAEu6lG/5ChRANCAASpLltYKtPad9F6RWG+FHylBCPc7oA6
YuZqC4aD9EgsCwcmKLiXrq1CtM/S3jLXz7qwm8V5ExTFXLgFjqrUwUNn
-----END PRIVATE KEY-----
";

/// The address the fuzzed host and [`client_initial`]'s client take for the server's.
pub const FUZZ_SERVER_ADDR: ([u8; 4], u16) = ([192, 0, 2, 1], 7400);

/// The source addresses the input picks from (`ctrl & 7`): two ports of one IPv4 address,
/// another IPv4 address, that first address mapped into IPv6 (the same source), two addresses
/// of one IPv6 /64 (the same source), another /64, and a port-0 address.
const SOURCES: [&str; 8] = [
    "198.51.100.1:4433",
    "198.51.100.1:5555",
    "203.0.113.7:443",
    "[::ffff:198.51.100.1]:6000",
    "[2001:db8::1]:9000",
    "[2001:db8::2]:9000",
    "[2001:db8:1::1]:9000",
    "198.51.100.9:0",
];

/// The gateway's packets are 1200 bytes at most (no path MTU discovery); only a stateless
/// reset may be larger, and then it is smaller than the datagram that incited it.
pub const MAX_TRANSMIT: usize = 1200;
/// Largest UDP payload (IPv6 without jumbograms; IPv4 allows 20 bytes fewer): the most one
/// record of the input carries, and a bound on every datagram sent.
const MAX_DATAGRAM: usize = 65_527;
/// The fuzzed host's idle (and so handshake) timeout: short, so that the final wait is short.
const IDLE: Duration = Duration::from_secs(10);

fn server_config() -> Arc<quinn_proto::ServerConfig> {
    static CONFIG: OnceLock<Arc<quinn_proto::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let s = QuicSettings { idle_timeout: IDLE, ..QuicSettings::default() };
            let cert = match CertificateDer::from_pem_slice(FUZZ_QUIC_CERT_PEM.as_bytes()) {
                Ok(c) => c,
                Err(e) => panic!("the fixed certificate parses: {e}"),
            };
            let key = match PrivateKeyDer::from_pem_slice(FUZZ_QUIC_KEY_PEM.as_bytes()) {
                Ok(k) => k,
                Err(e) => panic!("the fixed key parses: {e}"),
            };
            let built = config::tls(vec![cert], key, &s).and_then(|tls| config::server(tls, &s));
            match built {
                Ok(c) => c,
                Err(e) => panic!("the fuzz QUIC configuration builds: {e}"),
            }
        })
        .clone()
}

fn sources() -> [SocketAddr; 8] {
    SOURCES.map(|s| match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    })
}

/// QUIC datagrams as the gateway's UDP socket hands them to its [`QuicHost`].
///
/// `data[0]` picks the handshake limits: `retry` = bits 0-1 (0..=3), `max` = 2 + bits 2-3
/// (also the connection cap), `per_source` = bits 4-5 (0 = no cap). The rest is records of a
/// control byte, a 2-byte little-endian length and that many bytes (fewer at the end): bits
/// 0-2 of the control byte pick the source address, bits 3-7 (`n`) let `2·n³` ms pass first
/// (timers run), then the bytes, if any, are one datagram. Events and datagrams are drained
/// after each record; at the end two minutes pass.
///
/// Invariants (a panic is the finding): no panic in the host or quinn; connections stay within
/// the cap (= `max`), handshakes within `max`, each source's within `per_source`; every
/// datagram sent is non-empty, goes to an address that sent something, and is at most
/// [`MAX_TRANSMIT`] bytes or else smaller than the largest datagram received (no
/// amplification), and never over a UDP payload's limit; [`endpoint_of`] of every datagram, for 1 to 8 endpoints, is `None` or an index
/// below the count; at the end nothing is left: no connection, no handshake, no timer.
pub fn quic_datagram(data: &[u8]) {
    let Some((&limits_byte, mut rest)) = data.split_first() else { return };
    let limits = HandshakeLimits {
        retry: usize::from(limits_byte & 3),
        max: 2 + usize::from((limits_byte >> 2) & 3),
        per_source: usize::from((limits_byte >> 4) & 3),
    };
    let endpoint = config::endpoint(0, 2, &[0x51; 32]);
    let mut host = QuicHost::new(endpoint, server_config(), limits.max, limits);
    let sources = sources();
    let mut seen = Seen { senders: HashSet::new(), largest: 0 };
    let start = Instant::now();
    let mut now = start;
    while let Some((&ctrl, tail)) = rest.split_first() {
        let len = match tail {
            [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => 0,
        };
        let body = tail.get(2..).unwrap_or_default();
        let (datagram, next) = body.split_at(len.min(body.len()).min(MAX_DATAGRAM));
        rest = next;
        let step = u64::from(ctrl >> 3);
        now += Duration::from_millis(2 * step * step * step);
        host.handle_timeouts(now);
        if !datagram.is_empty() {
            check_steering(datagram);
            let from = sources[usize::from(ctrl & 7)];
            seen.senders.insert(from);
            seen.largest = seen.largest.max(datagram.len());
            host.handle(now, from, None, None, BytesMut::from(datagram));
        }
        drain(&mut host, now, &seen, limits, &sources);
    }
    for _ in 0..12 {
        now += Duration::from_secs(10);
        host.handle_timeouts(now);
        drain(&mut host, now, &seen, limits, &sources);
    }
    assert_eq!(host.connections(), 0, "connections left after two idle minutes");
    assert_eq!(host.handshakes(), 0, "handshakes left after two idle minutes");
    assert_eq!(host.next_timeout(), None, "a timer left behind");
}

fn check_steering(datagram: &[u8]) {
    for count in 1..=8 {
        if let Some(i) = endpoint_of(datagram, count) {
            assert!(i < count, "endpoint {i} of {count}");
        }
    }
}

/// What the host received so far.
struct Seen {
    senders: HashSet<SocketAddr>,
    /// The largest datagram.
    largest: usize,
}

fn drain(
    host: &mut QuicHost,
    now: Instant,
    seen: &Seen,
    limits: HandshakeLimits,
    sources: &[SocketAddr],
) {
    // Bounded: a host that keeps producing without input is a finding too.
    for _ in 0..10_000 {
        let event = host.poll_event(now);
        let transmit = host.poll_transmit(now);
        if let Some(t) = &transmit {
            assert!(!t.data.is_empty(), "an empty datagram");
            let len = t.data.len();
            let bound = MAX_TRANSMIT.max(seen.largest.saturating_sub(1)).min(MAX_DATAGRAM);
            assert!(len <= bound, "a {len}-byte datagram, the largest received {}", seen.largest);
            assert!(seen.senders.contains(&t.destination), "sent to {} unasked", t.destination);
            check_steering(&t.data);
        }
        if event.is_none() && transmit.is_none() {
            break;
        }
    }
    assert!(host.connections() <= limits.max, "{} connections", host.connections());
    assert!(host.handshakes() <= limits.max, "{} handshakes", host.handshakes());
    if limits.per_source > 0 {
        for a in sources {
            let n = host.handshakes_from(a.ip());
            assert!(n <= limits.per_source, "{n} handshakes from {a}");
        }
    }
}

/// A client's first datagram (its Initial, with a ClientHello for `localhost`, ALPN `tern/1`)
/// from a quinn-proto client, made deterministic: fixed connection IDs, a seeded endpoint RNG,
/// a fixed TLS random and a fixed X25519 key share (RFC 7748's test key; the client could not
/// finish a handshake with it, which the seeds do not need). The same bytes on every call
/// with the same `n`; different `n`, different connection IDs (different connections to the
/// host: its first Initial's destination ID is what names a client's connection).
pub fn client_initial(n: u8) -> Vec<u8> {
    let provider = CryptoProvider {
        kx_groups: vec![&FixedX25519],
        secure_random: &FixedRandom,
        ..rustls::crypto::ring::default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(cert) = CertificateDer::from_pem_slice(FUZZ_QUIC_CERT_PEM.as_bytes()) {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let mut tls = match tls {
        Ok(t) => t,
        Err(e) => panic!("the client TLS configuration builds: {e}"),
    };
    tls.alpn_protocols = vec![config::ALPN.to_vec()];
    let crypto = match QuicClientConfig::try_from(Arc::new(tls)) {
        Ok(c) => c,
        Err(e) => panic!("the client QUIC configuration builds: {e}"),
    };
    let mut client = ClientConfig::new(Arc::new(crypto));
    client.initial_dst_cid_provider(Arc::new(move || ConnectionId::new(&[0xd0 ^ n; CID_LEN])));
    let mut endpoint_cfg = EndpointConfig::default();
    endpoint_cfg.cid_generator(move || Box::new(FixedCids(n)));
    let mut endpoint = Endpoint::new(Arc::new(endpoint_cfg), None, false, Some([0x5e; 32]));
    let now = Instant::now();
    let server = SocketAddr::new(IpAddr::from(FUZZ_SERVER_ADDR.0), FUZZ_SERVER_ADDR.1);
    let (_, mut conn) = match endpoint.connect(now, client, server, "localhost") {
        Ok(c) => c,
        Err(e) => panic!("the client connects: {e}"),
    };
    let mut buf = Vec::new();
    match conn.poll_transmit(now, 1, &mut buf) {
        Some(t) => buf[..t.size].to_vec(),
        None => panic!("a new client sends its Initial"),
    }
}

/// The client's own connection IDs: always the same.
#[derive(Debug)]
struct FixedCids(u8);

impl ConnectionIdGenerator for FixedCids {
    fn generate_cid(&mut self) -> ConnectionId {
        ConnectionId::new(&[0xc0 ^ self.0; CID_LEN])
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// "Random" bytes that are always the same (the ClientHello's random).
#[derive(Debug)]
struct FixedRandom;

impl SecureRandom for FixedRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xa5;
        }
        Ok(())
    }
}

/// An X25519 key share that is always RFC 7748's (section 6.1) test public key.
#[derive(Debug)]
struct FixedX25519;

const RFC7748_PUBLIC: [u8; 32] = [
    0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a,
    0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a,
];

impl SupportedKxGroup for FixedX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, TlsError> {
        Ok(Box::new(FixedShare))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct FixedShare;

impl ActiveKeyExchange for FixedShare {
    fn complete(self: Box<Self>, _peer: &[u8]) -> Result<SharedSecret, TlsError> {
        Err(TlsError::General("the fuzz seed client never completes a handshake".into()))
    }

    fn pub_key(&self) -> &[u8] {
        &RFC7748_PUBLIC
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}
