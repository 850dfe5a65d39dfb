//! The way deliveries reach connections. In embedded mode the gateway's registry implements
//! [`Pusher`] directly; in the distributed mode a router looks presence up and forwards to
//! gateways.

use std::collections::HashSet;
use std::sync::Arc;

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

/// Delivers encoded frames to users' online devices.
pub trait Pusher: Send + Sync + 'static {
    /// Queues `frame` for every online device of `user_id` except the connection `skip` (the
    /// device that caused the push already has the answer). Never blocks: a connection that
    /// cannot take the frame is closed, and a push that cannot be routed is dropped; clients
    /// recover both by sync.
    fn push(&self, user_id: &str, frame: &Bytes, skip: Option<&ConnRef>);

    /// As [`Pusher::push`] for every user of `users` (distinct ids): one message to many, e.g.
    /// a group's members. The router routes it as one job (one presence pass, one Push per
    /// gateway); the default pushes user by user.
    fn push_many(&self, users: Arc<[String]>, frame: &Bytes, skip: Option<&ConnRef>) {
        for u in users.iter() {
            self.push(u, frame, skip);
        }
    }
}

/// Encodes a server push (request_id 0) once, to share among recipients.
pub fn encode_push(body: Body) -> Bytes {
    let env = Envelope { request_id: 0, body: Some(body) };
    tern_proto::encode_to_bytes(&env, usize::MAX).unwrap_or_default()
}

/// Pushes `body` to every user in `users` (each at most once), skipping one connection.
pub fn fan_out(pusher: &dyn Pusher, users: &[String], body: Body, skip: Option<&ConnRef>) {
    let frame = encode_push(body);
    match users {
        [] => {}
        [one] => pusher.push(one, &frame, skip),
        many => pusher.push_many(distinct(many), &frame, skip),
    }
}

/// `users` without repeats, in first-seen order.
pub fn distinct(users: &[String]) -> Arc<[String]> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(users.len());
    users.iter().filter(|u| seen.insert(u.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keeps_the_first_of_each_in_order() {
        let users: Vec<String> = ["b", "a", "b", "c", "a"].iter().map(|s| s.to_string()).collect();
        assert_eq!(&*distinct(&users), ["b", "a", "c"]);
    }
}
