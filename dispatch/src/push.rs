//! The way deliveries reach connections. In embedded mode the gateway's registry implements
//! [`Pusher`] directly; in the distributed mode a router looks presence up and forwards to
//! gateways.

use bytes::Bytes;
use tern_proto::v1::{Envelope, envelope::Body};

/// Delivers encoded frames to a user's online devices.
pub trait Pusher: Send + Sync + 'static {
    /// Queues `frame` for every online device of `user_id` except the connection
    /// `skip_connection` (the device that caused the push already has the answer). Never
    /// blocks: a connection that cannot take the frame is closed and recovers by sync.
    fn push(&self, user_id: &str, frame: &Bytes, skip_connection: Option<u64>);
}

/// Encodes a server push (request_id 0) once, to share among recipients.
pub fn encode_push(body: Body) -> Bytes {
    let env = Envelope { request_id: 0, body: Some(body) };
    tern_proto::encode_to_bytes(&env, usize::MAX).unwrap_or_default()
}

/// Pushes `body` to every user in `users` (each at most once), skipping one connection.
pub fn fan_out(pusher: &dyn Pusher, users: &[String], body: Body, skip_connection: Option<u64>) {
    let frame = encode_push(body);
    for (i, u) in users.iter().enumerate() {
        if !users[..i].contains(u) {
            pusher.push(u, &frame, skip_connection);
        }
    }
}
