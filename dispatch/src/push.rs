//! The way deliveries reach connections. In embedded mode the gateway's registry implements
//! [`Pusher`] directly; in the distributed mode a router looks presence up and forwards to
//! gateways.

use bytes::Bytes;
use tern_proto::v1::{Envelope, envelope::Body};

/// One client connection: the gateway that holds it and the gateway's id for it. (Connection
/// ids are only unique within one gateway.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The gateway's id ("" in embedded mode, which has one gateway).
    pub gateway_id: String,
    /// The gateway's connection id.
    pub connection_id: u64,
}

/// Delivers encoded frames to a user's online devices.
pub trait Pusher: Send + Sync + 'static {
    /// Queues `frame` for every online device of `user_id` except the connection `skip` (the
    /// device that caused the push already has the answer). Never blocks: a connection that
    /// cannot take the frame is closed, and a push that cannot be routed is dropped; clients
    /// recover both by sync.
    fn push(&self, user_id: &str, frame: &Bytes, skip: Option<&ConnRef>);
}

/// Encodes a server push (request_id 0) once, to share among recipients.
pub fn encode_push(body: Body) -> Bytes {
    let env = Envelope { request_id: 0, body: Some(body) };
    tern_proto::encode_to_bytes(&env, usize::MAX).unwrap_or_default()
}

/// Pushes `body` to every user in `users` (each at most once), skipping one connection.
pub fn fan_out(pusher: &dyn Pusher, users: &[String], body: Body, skip: Option<&ConnRef>) {
    let frame = encode_push(body);
    for (i, u) in users.iter().enumerate() {
        if !users[..i].contains(u) {
            pusher.push(u, &frame, skip);
        }
    }
}
