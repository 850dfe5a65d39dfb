//! The link handshake (`tern.link.v1`, link version 2) as I/O-free state machines: a gateway
//! ([`Dialer`]) and a dispatch worker ([`Acceptor`]) prove to each other that they hold the
//! cluster secret before either accepts or sends a Request, Response, Push or Kick.
//!
//! ```text
//! gateway (dialer)                                   worker (acceptor)
//!   Hello{gateway_id, version 2, nonce_g}      ──►
//!                                              ◄──   HelloOk{worker_id, nonce_w, address, proof_w}
//!   checks proof_w (and that `address` is
//!   the address it dialed)
//!   HelloProof{proof_g}                        ──►   checks proof_g
//!                                              ◄──   LinkUp
//!   ... Requests                               ──►   ... Responses, Pushes
//! ```
//!
//! `proof_w = HMAC-SHA256(secret, "tern link v2 worker proof" ‖ transcript)` and
//! `proof_g = HMAC-SHA256(secret, "tern link v2 gateway proof" ‖ transcript)`, where the
//! transcript is the link version, the gateway id, the worker id, the worker's link address
//! (each length-prefixed) and both 32-byte nonces. Different labels per direction mean one side's
//! proof is never valid as the other's; fresh nonces from both sides mean no proof can be
//! replayed on another link; the gateway proves only after the worker did, so a peer without
//! the secret learns no gateway proof. The address binds the worker's proof to where the gateway
//! dialed: a rogue process registered in presence that relays a real worker's HelloOk is
//! refused, because that worker proved its own address, not the relay's. Proofs are compared in
//! constant time ([`Mac::verify_slice`]).
//!
//! Nonces are passed in (the drivers draw them from the OS), like the clock elsewhere in this
//! crate. The handshake deadline is the driver's too (one timer around the whole exchange).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::link::v1::{self as link, link_frame::Body};

/// The link version that authenticates (Hello.version). Version 1 had no handshake and is
/// refused.
pub const LINK_VERSION: u32 = 2;
/// Bytes of each side's nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof (HMAC-SHA256).
pub const PROOF_BYTES: usize = 32;
/// Fewest bytes a cluster secret may have.
pub const MIN_SECRET_BYTES: usize = 32;
/// Largest frame either side accepts before the peer is authenticated (a Hello is ~100 bytes):
/// an unauthenticated peer cannot make the other buffer a large frame.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

const WORKER_LABEL: &[u8] = b"tern link v2 worker proof\0";
const GATEWAY_LABEL: &[u8] = b"tern link v2 gateway proof\0";
/// Longest id or address accepted in a handshake.
const MAX_NAME_BYTES: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// A bad cluster secret (configuration).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    /// No secret at all.
    #[error("no cluster secret given")]
    Empty,
    /// A secret shorter than [`MIN_SECRET_BYTES`].
    #[error("cluster secret #{index} has {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    TooShort {
        /// Position in the list (1 = the one this node proves with).
        index: usize,
        /// Its length.
        len: usize,
    },
}

/// The cluster secrets of one node: the first proves this node to its peers, every one is
/// accepted from peers (so a secret can be rotated with rolling restarts; see DEPLOYMENT.md).
#[derive(Clone)]
pub struct LinkSecrets {
    keys: Vec<Vec<u8>>,
}

impl fmt::Debug for LinkSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkSecrets({} key(s), redacted)", self.keys.len())
    }
}

/// The well-known secret of `cluster.insecure_links` (loopback development only): anyone can
/// compute proofs with it, so it authenticates nothing.
const INSECURE_SECRET: &[u8; 32] = b"tern insecure loopback dev link!";

impl LinkSecrets {
    /// Secrets from raw bytes; the first proves, all are accepted. Each must have at least
    /// [`MIN_SECRET_BYTES`].
    pub fn new(keys: Vec<Vec<u8>>) -> Result<Self, SecretError> {
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if k.len() < MIN_SECRET_BYTES {
                return Err(SecretError::TooShort { index: i + 1, len: k.len() });
            }
        }
        Ok(Self { keys })
    }

    /// The public development secret of `cluster.insecure_links`. It only keeps the handshake
    /// code path the same; it proves nothing.
    pub fn insecure_development() -> Self {
        Self { keys: vec![INSECURE_SECRET.to_vec()] }
    }

    /// Whether this is [`LinkSecrets::insecure_development`].
    pub fn is_insecure(&self) -> bool {
        self.keys.iter().any(|k| k.as_slice() == INSECURE_SECRET)
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true (a `LinkSecrets` always holds one secret at least).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn mac(key: &[u8], label: &[u8], t: &Transcript<'_>) -> HmacSha256 {
        // ok: HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(label);
        t.feed(&mut mac);
        mac
    }

    /// The proof this node gives (with its first secret).
    fn prove(&self, label: &[u8], t: &Transcript<'_>) -> Vec<u8> {
        Self::mac(&self.keys[0], label, t).finalize().into_bytes().to_vec()
    }

    /// Whether `proof` was made with any accepted secret (each compared in constant time).
    fn verify(&self, label: &[u8], t: &Transcript<'_>, proof: &[u8]) -> bool {
        let mut ok = false;
        for key in &self.keys {
            ok |= Self::mac(key, label, t).verify_slice(proof).is_ok();
        }
        ok
    }
}

/// What both proofs cover.
struct Transcript<'a> {
    gateway_id: &'a str,
    worker_id: &'a str,
    address: &'a str,
    nonce_g: &'a [u8],
    nonce_w: &'a [u8],
}

impl Transcript<'_> {
    fn feed(&self, mac: &mut HmacSha256) {
        mac.update(&LINK_VERSION.to_be_bytes());
        for part in [self.gateway_id.as_bytes(), self.worker_id.as_bytes(), self.address.as_bytes()]
        {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.update(self.nonce_g);
        mac.update(self.nonce_w);
    }
}

/// Why a handshake failed. Its text is what the logs say (and what the peer is told in a
/// `Refused` frame).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuthFailure {
    /// The peer's proof was made with a secret this node does not accept.
    #[error("bad proof: the peer does not know this cluster's secret (check cluster.secret)")]
    BadProof,
    /// A Hello of another link version (1 = a Tern without link authentication).
    #[error(
        "link version {got} (this node speaks {LINK_VERSION}; version 1 predates link \
         authentication: upgrade that node)"
    )]
    Version {
        /// The version the peer sent.
        got: u32,
    },
    /// A nonce or proof of the wrong size.
    #[error("{what} has {len} bytes, expected {expected}")]
    BadLength {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length required.
        expected: usize,
    },
    /// An empty or oversized id or address.
    #[error("invalid {what} in the handshake")]
    BadName {
        /// Which field.
        what: &'static str,
    },
    /// The worker proved another address than the one this gateway dialed.
    #[error(
        "the worker at {dialed} proves the address {proved:?}: gateways must dial exactly the \
         address the worker announces (set cluster.link_advertise on the worker, or list that \
         address in cluster.dispatch_workers)"
    )]
    AddressMismatch {
        /// What the gateway dialed.
        dialed: String,
        /// What the worker proved.
        proved: String,
    },
    /// A frame that has no place at this point of the handshake.
    #[error("unexpected {got} frame before the link was authenticated")]
    Unexpected {
        /// The frame's kind.
        got: &'static str,
    },
    /// The peer refused this node (its reason, as it sent it; not trusted).
    #[error("refused by the peer: {0}")]
    RefusedByPeer(String),
    /// The handshake ended before it was complete (EOF, timeout: set by the driver).
    #[error("{0}")]
    Incomplete(String),
}

fn kind(body: &Option<Body>) -> &'static str {
    match body {
        None => "empty",
        Some(Body::Hello(_)) => "Hello",
        Some(Body::HelloOk(_)) => "HelloOk",
        Some(Body::HelloProof(_)) => "HelloProof",
        Some(Body::Refused(_)) => "Refused",
        Some(Body::LinkUp(_)) => "LinkUp",
        Some(Body::Request(_)) => "Request",
        Some(Body::Response(_)) => "Response",
        Some(Body::Push(_)) => "Push",
        Some(Body::Ping(_)) => "Ping",
        Some(Body::Pong(_)) => "Pong",
        Some(Body::KickConnection(_)) => "KickConnection",
    }
}

fn check_len(what: &'static str, b: &[u8], expected: usize) -> Result<(), AuthFailure> {
    if b.len() == expected {
        Ok(())
    } else {
        Err(AuthFailure::BadLength { what, len: b.len(), expected })
    }
}

fn check_name(what: &'static str, s: &str) -> Result<(), AuthFailure> {
    if s.is_empty() || s.len() > MAX_NAME_BYTES {
        Err(AuthFailure::BadName { what })
    } else {
        Ok(())
    }
}

fn frame(body: Body) -> link::LinkFrame {
    link::LinkFrame { id: 0, body: Some(body) }
}

/// The `Refused` frame a side sends before it closes a link it refused (informative only).
pub fn refused_frame(failure: &AuthFailure) -> link::LinkFrame {
    frame(Body::Refused(link::Refused { reason: failure.to_string() }))
}

/// The gateway's side of the handshake.
#[derive(Debug)]
pub struct Dialer {
    secrets: LinkSecrets,
    gateway_id: String,
    dialed: String,
    nonce_g: [u8; NONCE_BYTES],
    state: DialerState,
}

#[derive(Debug)]
enum DialerState {
    AwaitHelloOk,
    AwaitLinkUp { worker_id: String },
    Done,
    Failed(AuthFailure),
}

/// What the gateway does after a handshake frame.
#[derive(Debug, Clone, PartialEq)]
pub enum DialerStep {
    /// The worker proved itself: send this frame (HelloProof) and wait for LinkUp.
    Reply(Box<link::LinkFrame>),
    /// The worker accepted this gateway's proof: the link is up (Requests may go now).
    Linked {
        /// The worker's id (from its HelloOk).
        worker_id: String,
    },
}

impl Dialer {
    /// Starts a handshake with the worker at `dialed` (the address exactly as dialed); returns
    /// the machine and the Hello to send first.
    pub fn new(
        secrets: LinkSecrets,
        gateway_id: impl Into<String>,
        dialed: impl Into<String>,
        nonce_g: [u8; NONCE_BYTES],
    ) -> (Self, link::LinkFrame) {
        let gateway_id = gateway_id.into();
        let hello = frame(Body::Hello(link::Hello {
            gateway_id: gateway_id.clone(),
            version: LINK_VERSION,
            nonce: nonce_g.to_vec().into(),
        }));
        let d = Self {
            secrets,
            gateway_id,
            dialed: dialed.into(),
            nonce_g,
            state: DialerState::AwaitHelloOk,
        };
        (d, hello)
    }

    /// Takes a frame from the worker. Any `Err` is final (send [`refused_frame`] and close).
    pub fn on_frame(&mut self, f: link::LinkFrame) -> Result<DialerStep, AuthFailure> {
        let state = std::mem::replace(&mut self.state, DialerState::Done);
        let (next, result) = match state {
            DialerState::Failed(e) => (DialerState::Failed(e.clone()), Err(e)),
            DialerState::Done => {
                (DialerState::Done, Err(AuthFailure::Unexpected { got: kind(&f.body) }))
            }
            DialerState::AwaitHelloOk => match self.on_hello_ok(f) {
                Ok((worker_id, reply)) => {
                    (DialerState::AwaitLinkUp { worker_id }, Ok(DialerStep::Reply(Box::new(reply))))
                }
                Err(e) => (DialerState::Failed(e.clone()), Err(e)),
            },
            DialerState::AwaitLinkUp { worker_id } => match f.body {
                Some(Body::LinkUp(_)) => (DialerState::Done, Ok(DialerStep::Linked { worker_id })),
                Some(Body::Refused(r)) => {
                    let e = AuthFailure::RefusedByPeer(r.reason);
                    (DialerState::Failed(e.clone()), Err(e))
                }
                other => {
                    let e = AuthFailure::Unexpected { got: kind(&other) };
                    (DialerState::Failed(e.clone()), Err(e))
                }
            },
        };
        self.state = next;
        result
    }

    fn on_hello_ok(&self, f: link::LinkFrame) -> Result<(String, link::LinkFrame), AuthFailure> {
        let ok = match f.body {
            Some(Body::HelloOk(ok)) => ok,
            Some(Body::Refused(r)) => return Err(AuthFailure::RefusedByPeer(r.reason)),
            other => return Err(AuthFailure::Unexpected { got: kind(&other) }),
        };
        check_name("worker id", &ok.worker_id)?;
        check_len("worker nonce", &ok.nonce, NONCE_BYTES)?;
        check_len("worker proof", &ok.proof, PROOF_BYTES)?;
        if ok.address != self.dialed {
            return Err(AuthFailure::AddressMismatch {
                dialed: self.dialed.clone(),
                proved: ok.address.chars().take(MAX_NAME_BYTES).collect(),
            });
        }
        let t = Transcript {
            gateway_id: &self.gateway_id,
            worker_id: &ok.worker_id,
            address: &self.dialed,
            nonce_g: &self.nonce_g,
            nonce_w: &ok.nonce,
        };
        if !self.secrets.verify(WORKER_LABEL, &t, &ok.proof) {
            return Err(AuthFailure::BadProof);
        }
        let proof = self.secrets.prove(GATEWAY_LABEL, &t);
        Ok((ok.worker_id, frame(Body::HelloProof(link::HelloProof { proof: proof.into() }))))
    }

    /// The worker id claimed in its HelloOk (proven once linked), for logs.
    pub fn claimed_worker(&self) -> Option<&str> {
        match &self.state {
            DialerState::AwaitLinkUp { worker_id } => Some(worker_id),
            _ => None,
        }
    }
}

/// The worker's side of the handshake.
#[derive(Debug)]
pub struct Acceptor {
    secrets: LinkSecrets,
    worker_id: String,
    address: String,
    nonce_w: [u8; NONCE_BYTES],
    state: AcceptorState,
}

#[derive(Debug)]
enum AcceptorState {
    AwaitHello,
    AwaitProof { gateway_id: String, nonce_g: Vec<u8> },
    Done,
    Failed(AuthFailure),
}

/// What the worker does after a handshake frame.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptorStep {
    /// Send this frame (HelloOk) and wait for the gateway's proof.
    Reply(link::LinkFrame),
    /// The gateway proved itself: send this frame (LinkUp); the link is up for this gateway.
    Authenticated {
        /// The gateway's id (from its Hello).
        gateway_id: String,
        /// LinkUp, to send before anything else.
        reply: link::LinkFrame,
    },
}

impl Acceptor {
    /// A handshake of worker `worker_id`, which gateways dial at `address` (what it announces
    /// in presence, or its bound link address).
    pub fn new(
        secrets: LinkSecrets,
        worker_id: impl Into<String>,
        address: impl Into<String>,
        nonce_w: [u8; NONCE_BYTES],
    ) -> Self {
        Self {
            secrets,
            worker_id: worker_id.into(),
            address: address.into(),
            nonce_w,
            state: AcceptorState::AwaitHello,
        }
    }

    /// Takes a frame from the gateway. Any `Err` is final (send [`refused_frame`] and close).
    pub fn on_frame(&mut self, f: link::LinkFrame) -> Result<AcceptorStep, AuthFailure> {
        let state = std::mem::replace(&mut self.state, AcceptorState::Done);
        let (next, result) = match state {
            AcceptorState::Failed(e) => (AcceptorState::Failed(e.clone()), Err(e)),
            AcceptorState::Done => {
                (AcceptorState::Done, Err(AuthFailure::Unexpected { got: kind(&f.body) }))
            }
            AcceptorState::AwaitHello => match self.on_hello(f) {
                Ok((gateway_id, nonce_g, reply)) => {
                    (AcceptorState::AwaitProof { gateway_id, nonce_g }, Ok(reply))
                }
                Err(e) => (AcceptorState::Failed(e.clone()), Err(e)),
            },
            AcceptorState::AwaitProof { gateway_id, nonce_g } => {
                match self.on_proof(f, &gateway_id, &nonce_g) {
                    Ok(()) => {
                        let reply = frame(Body::LinkUp(link::LinkUp {}));
                        (AcceptorState::Done, Ok(AcceptorStep::Authenticated { gateway_id, reply }))
                    }
                    Err(e) => (AcceptorState::Failed(e.clone()), Err(e)),
                }
            }
        };
        self.state = next;
        result
    }

    fn transcript<'a>(&'a self, gateway_id: &'a str, nonce_g: &'a [u8]) -> Transcript<'a> {
        Transcript {
            gateway_id,
            worker_id: &self.worker_id,
            address: &self.address,
            nonce_g,
            nonce_w: &self.nonce_w,
        }
    }

    fn on_hello(&self, f: link::LinkFrame) -> Result<(String, Vec<u8>, AcceptorStep), AuthFailure> {
        let hello = match f.body {
            Some(Body::Hello(h)) => h,
            Some(Body::Refused(r)) => return Err(AuthFailure::RefusedByPeer(r.reason)),
            other => return Err(AuthFailure::Unexpected { got: kind(&other) }),
        };
        if hello.version != LINK_VERSION {
            return Err(AuthFailure::Version { got: hello.version });
        }
        check_name("gateway id", &hello.gateway_id)?;
        check_len("gateway nonce", &hello.nonce, NONCE_BYTES)?;
        let nonce_g = hello.nonce.to_vec();
        let proof = self.secrets.prove(WORKER_LABEL, &self.transcript(&hello.gateway_id, &nonce_g));
        let reply = frame(Body::HelloOk(link::HelloOk {
            worker_id: self.worker_id.clone(),
            nonce: self.nonce_w.to_vec().into(),
            address: self.address.clone(),
            proof: proof.into(),
        }));
        Ok((hello.gateway_id, nonce_g, AcceptorStep::Reply(reply)))
    }

    fn on_proof(
        &self,
        f: link::LinkFrame,
        gateway_id: &str,
        nonce_g: &[u8],
    ) -> Result<(), AuthFailure> {
        let p = match f.body {
            Some(Body::HelloProof(p)) => p,
            Some(Body::Refused(r)) => return Err(AuthFailure::RefusedByPeer(r.reason)),
            other => return Err(AuthFailure::Unexpected { got: kind(&other) }),
        };
        check_len("gateway proof", &p.proof, PROOF_BYTES)?;
        if self.secrets.verify(GATEWAY_LABEL, &self.transcript(gateway_id, nonce_g), &p.proof) {
            Ok(())
        } else {
            Err(AuthFailure::BadProof)
        }
    }

    /// The gateway id claimed in the Hello (not yet proven unless authenticated), for logs.
    pub fn claimed_gateway(&self) -> Option<&str> {
        match &self.state {
            AcceptorState::AwaitProof { gateway_id, .. } => Some(gateway_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
