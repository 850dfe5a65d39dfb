//! Fuzz body of the link handshake (`crate::session::link`): arbitrary link frames against
//! both machines, with honest frames mixed in so that the success paths are reached too.

use bytes::BytesMut;

use crate::codec::FrameDecoder;
use crate::link::v1::{self as link, link_frame::Body};
use crate::session::link::{
    Acceptor, AcceptorStep, Dialer, DialerStep, LinkSecrets, MAX_HANDSHAKE_FRAME, NONCE_BYTES,
};

const ADDR: &str = "127.0.0.1:7500";

fn secrets() -> LinkSecrets {
    // ok: a constant 32-byte key is valid.
    LinkSecrets::new(vec![vec![0x5a; 32]]).unwrap_or_else(|_| unreachable!())
}

fn nonce(v: &[u8]) -> Option<[u8; NONCE_BYTES]> {
    v.try_into().ok()
}

/// `data[0]` bit 0: start the acceptor with an honest Hello; bit 1: answer its HelloOk with
/// the honest proof; bit 2: start the dialer with an honest HelloOk; bit 3: then an honest
/// LinkUp. `data[1..]` is a stream of link frames (capped at [`MAX_HANDSHAKE_FRAME`]), all fed
/// to both machines after the honest ones.
///
/// Invariants: the acceptor authenticates only a HelloProof equal to the one an honest gateway
/// computes for the Hello it answered; the dialer sends its proof only for a HelloOk whose
/// proof an honest worker with that id and nonce computes for this address, and links only at
/// a LinkUp after that; an honest HelloOk always verifies; after an error every frame is
/// refused; nothing panics.
pub fn link_handshake(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else { return };
    let mut frames = Vec::new();
    let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME);
    let mut buf = BytesMut::from(stream);
    while let Ok(Some(f)) = decoder.decode_as::<link::LinkFrame>(&mut buf) {
        frames.push(f);
        if frames.len() == 32 {
            break;
        }
    }
    acceptor_side(mode, &frames);
    dialer_side(mode, &frames);
}

fn acceptor_side(mode: u8, frames: &[link::LinkFrame]) {
    let mut a = Acceptor::new(secrets(), "W1", ADDR, [2; NONCE_BYTES]);
    let (_, honest_hello) = Dialer::new(secrets(), "G1", ADDR, [1; NONCE_BYTES]);
    let mut feed: Vec<link::LinkFrame> = Vec::new();
    if mode & 1 != 0 {
        feed.push(honest_hello);
    }
    feed.extend(frames.iter().cloned());
    // The proof an honest gateway gives for the Hello the acceptor answered.
    let mut expected: Option<(String, Vec<u8>)> = None;
    let mut failed = false;
    let mut done = false;
    let mut i = 0;
    while i < feed.len() {
        let f = feed[i].clone();
        let hello = match &f.body {
            Some(Body::Hello(h)) => Some(h.clone()),
            _ => None,
        };
        let proof = match &f.body {
            Some(Body::HelloProof(p)) => Some(p.proof.to_vec()),
            _ => None,
        };
        match a.on_frame(f) {
            Ok(AcceptorStep::Reply(ok)) => {
                assert!(!failed && !done && expected.is_none(), "reply after the end");
                let h = hello.unwrap_or_else(|| panic!("HelloOk without a Hello"));
                let n = nonce(&h.nonce).unwrap_or_else(|| panic!("accepted a bad nonce"));
                let (mut d, _) = Dialer::new(secrets(), h.gateway_id.clone(), ADDR, n);
                match d.on_frame(ok) {
                    Ok(DialerStep::Reply(p)) => {
                        let Some(Body::HelloProof(p)) = p.body else { panic!("not a proof") };
                        if mode & 2 != 0 {
                            feed.insert(
                                i + 1,
                                link::LinkFrame { id: 0, body: Some(Body::HelloProof(p.clone())) },
                            );
                        }
                        expected = Some((h.gateway_id, p.proof.to_vec()));
                    }
                    other => panic!("an honest HelloOk did not verify: {other:?}"),
                }
            }
            Ok(AcceptorStep::Authenticated { gateway_id, .. }) => {
                let (g, p) = expected.clone().unwrap_or_else(|| panic!("authenticated early"));
                assert_eq!(gateway_id, g);
                assert_eq!(proof.as_deref(), Some(p.as_slice()), "accepted a forged proof");
                assert!(!done && !failed);
                done = true;
            }
            Err(_) => failed = true,
        }
        if failed || done {
            // Final: everything after is refused.
            let probe = link::LinkFrame { id: 0, body: Some(Body::Ping(link::Ping {})) };
            assert!(a.on_frame(probe).is_err());
        }
        i += 1;
    }
}

fn dialer_side(mode: u8, frames: &[link::LinkFrame]) {
    let (mut d, hello) = Dialer::new(secrets(), "G1", ADDR, [1; NONCE_BYTES]);
    let mut feed: Vec<link::LinkFrame> = Vec::new();
    if mode & 4 != 0 {
        let mut honest = Acceptor::new(secrets(), "W1", ADDR, [2; NONCE_BYTES]);
        if let Ok(AcceptorStep::Reply(ok)) = honest.on_frame(hello.clone()) {
            feed.push(ok);
        }
        if mode & 8 != 0 {
            feed.push(link::LinkFrame { id: 0, body: Some(Body::LinkUp(link::LinkUp {})) });
        }
    }
    feed.extend(frames.iter().cloned());
    let mut proved = false;
    let mut end = false;
    for f in feed {
        let ok = match &f.body {
            Some(Body::HelloOk(ok)) => Some(ok.clone()),
            _ => None,
        };
        let is_link_up = matches!(f.body, Some(Body::LinkUp(_)));
        match d.on_frame(f) {
            Ok(DialerStep::Reply(proof)) => {
                assert!(!proved && !end);
                let ok = ok.unwrap_or_else(|| panic!("proved without a HelloOk"));
                assert_eq!(ok.address, ADDR, "proved for another address");
                let n = nonce(&ok.nonce).unwrap_or_else(|| panic!("accepted a bad nonce"));
                // Only a worker with the secret could have made that proof.
                let mut honest = Acceptor::new(secrets(), ok.worker_id.clone(), ADDR, n);
                let Ok(AcceptorStep::Reply(expected)) = honest.on_frame(hello.clone()) else {
                    panic!("the honest worker refused the Hello");
                };
                let Some(Body::HelloOk(expected)) = expected.body else { panic!("not HelloOk") };
                assert_eq!(ok.proof, expected.proof, "accepted a forged worker proof");
                // And the gateway's proof convinces that worker.
                assert!(matches!(honest.on_frame(*proof), Ok(AcceptorStep::Authenticated { .. })));
                proved = true;
            }
            Ok(DialerStep::Linked { .. }) => {
                assert!(proved && is_link_up && !end, "linked without the worker's proof");
                end = true;
            }
            Err(_) => end = true,
        }
        if end {
            let probe = link::LinkFrame { id: 0, body: Some(Body::LinkUp(link::LinkUp {})) };
            assert!(d.on_frame(probe).is_err());
        }
    }
}
