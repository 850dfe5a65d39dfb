//! [`ServerSession`] against a rustls QUIC client, in memory: the handshake bytes are handed
//! across by the test, as rustls's own QUIC tests do.

use std::sync::Arc;

use bytes::BytesMut;
use quinn_proto::crypto::Session as _;
use quinn_proto::crypto::rustls::HandshakeData;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::quic::{ClientConnection, KeyChange, PacketKey, Secrets, Version};

use super::*;
use crate::quic::config::{self, ALPN, QuicSettings};
use crate::quic::tests::{cert, client_tls};

fn client(cert: &CertificateDer<'static>) -> ClientConnection {
    let tls = client_tls(cert);
    let name = ServerName::try_from("localhost").unwrap();
    // The transport parameters are opaque to TLS; quinn's parsing of them is quinn's business.
    ClientConnection::new(Arc::new(tls), Version::V1, name, b"client params".to_vec()).unwrap()
}

fn server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> ServerSession {
    let tls = config::tls(vec![cert], key, &QuicSettings::default()).unwrap();
    let crypto = ServerCrypto::new(Arc::new(tls)).unwrap();
    let conn = ServerConnection::new(crypto.tls.clone(), Version::V1, b"server".to_vec()).unwrap();
    let state = State::Handshake { tls: Box::new(conn), announced: false };
    ServerSession { version: Version::V1, initial: crypto.initial, state, next: None }
}

/// Runs the handshake to its end; returns the client's key schedule for key updates.
fn handshake(client: &mut ClientConnection, server: &mut ServerSession) -> Secrets {
    let mut client_next = None;
    for _ in 0..20 {
        let mut moved = false;
        loop {
            let mut buf = Vec::new();
            let change = client.write_hs(&mut buf);
            let changed = change.is_some();
            if let Some(KeyChange::OneRtt { next, .. }) = change {
                client_next = Some(next);
            }
            if !buf.is_empty() {
                server.read_handshake(&buf).unwrap();
                moved = true;
            } else if !changed {
                break;
            }
        }
        loop {
            let mut buf = Vec::new();
            let keys = server.write_handshake(&mut buf);
            if !buf.is_empty() {
                client.read_hs(&buf).unwrap();
                moved = true;
            } else if keys.is_none() {
                break;
            }
        }
        if !moved {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    client_next.expect("the client has 1-RTT keys")
}

/// A packet sealed with `key` as quinn would: payload then tag.
fn seal(key: &dyn PacketKey, number: u64, body: &[u8]) -> BytesMut {
    let mut payload = body.to_vec();
    let tag = key.encrypt_in_place(number, b"header", &mut payload).unwrap();
    payload.extend_from_slice(tag.as_ref());
    BytesMut::from(&payload[..])
}

fn opens(key: &dyn quinn_proto::crypto::PacketKey, number: u64, mut packet: BytesMut) -> bool {
    key.decrypt(number, b"header", &mut packet).is_ok() && &packet[..] == b"ping"
}

#[test]
fn after_the_handshake_rustls_is_dropped_and_alpn_and_sni_remain() {
    let (cert, key) = cert();
    let (mut c, mut s) = (client(&cert), server(cert, key));
    assert!(!s.is_lean());
    handshake(&mut c, &mut s);
    assert!(s.is_lean(), "the handshake is over and the ticket was written");
    assert!(c.tls13_tickets_received() >= 1, "the client got its session ticket");
    let data = s.handshake_data().unwrap().downcast::<HandshakeData>().unwrap();
    assert_eq!(data.protocol.as_deref(), Some(ALPN));
    assert_eq!(data.server_name.as_deref(), Some("localhost"));
    assert!(s.transport_parameters().unwrap().is_none(), "asked once, during the handshake");
    let mut out = Vec::new();
    assert!(s.write_handshake(&mut out).is_none() && out.is_empty());
}

#[test]
fn a_tls_message_after_the_handshake_is_an_unexpected_message() {
    let (cert, key) = cert();
    let (mut c, mut s) = (client(&cert), server(cert, key));
    handshake(&mut c, &mut s);
    let err = s.read_handshake(&[24, 0, 0, 1, 0]).unwrap_err(); // a KeyUpdate
    assert_eq!(err.code, TransportErrorCode::crypto(UNEXPECTED_MESSAGE));
}

#[test]
fn key_phases_are_derived_on_first_use_and_match_the_clients() {
    let (cert, key) = cert();
    let (mut c, mut s) = (client(&cert), server(cert, key));
    let mut client_next = handshake(&mut c, &mut s);
    let client_phase1 = client_next.next_packet_keys();
    let client_phase2 = client_next.next_packet_keys();
    let client_phase3 = client_next.next_packet_keys();

    let phase1 = s.next_1rtt_keys().unwrap();
    let probe = LazyKey { pair: s.next.as_ref().unwrap().last.clone().unwrap(), local: true };
    assert!(!probe.is_derived(), "no key is derived before a packet needs it");
    assert_eq!(phase1.remote.tag_len(), 16, "the limits need no key");
    assert!(phase1.local.confidentiality_limit() > 0 && phase1.remote.integrity_limit() > 0);
    assert!(!probe.is_derived());

    // Phase 2 is asked for before phase 1 was used (a key update quinn starts itself):
    // phase 1 is settled first, so each phase still gets its own keys.
    let phase2 = s.next_1rtt_keys().unwrap();
    assert!(probe.is_derived());
    assert!(opens(&*phase2.remote, 9, seal(&*client_phase2.local, 9, b"ping")));
    assert!(opens(&*phase1.remote, 7, seal(&*client_phase1.local, 7, b"ping")));
    assert!(!opens(&*phase1.remote, 8, seal(&*client_phase2.local, 8, b"ping")));

    // And the other way: what the server seals, the client opens.
    let mut sealed = vec![0u8; 4 + 16];
    sealed[..4].copy_from_slice(b"ping");
    phase2.local.encrypt(3, &mut sealed, 0);
    let plain = client_phase2.remote.decrypt_in_place(3, b"", &mut sealed).unwrap();
    assert_eq!(plain, b"ping");

    let phase3 = s.next_1rtt_keys().unwrap();
    assert!(opens(&*phase3.remote, 1, seal(&*client_phase3.local, 1, b"ping")));
}
