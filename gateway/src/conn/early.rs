//! What a QUIC client may do in 0-RTT data. Early data can be replayed by anyone who recorded
//! it (RFC 9001 §9.2; RFC 8446 §8), so before the handshake completes the gateway acts only on
//! frames whose replay changes nothing: Login (it opens a session; a replay cannot complete the
//! handshake, and the gateway's session tickets open 0-RTT once each), Ping and the read-only
//! requests. The first other frame (a Send, a Receipt, a Recall, a token refresh, a group
//! change) and everything after it wait, unread, until the handshake completes, then run in
//! order: they cost the client at most one round trip and are never refused.

use tern_proto::v1::Envelope;
use tern_proto::v1::envelope::Body;

/// Whether `frame` may be acted on before the QUIC handshake completed.
pub fn replay_safe(frame: &Envelope) -> bool {
    matches!(
        frame.body,
        Some(
            Body::Login(_)
                | Body::Ping(_)
                | Body::SyncRequest(_)
                | Body::ListConversations(_)
                | Body::GetReceipts(_)
                | Body::GetGroup(_)
                | Body::ListGroupMembers(_)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::v1;

    fn env(body: Body) -> Envelope {
        Envelope { request_id: 1, body: Some(body) }
    }

    #[test]
    fn only_session_and_read_frames_are_replay_safe() {
        assert!(replay_safe(&env(Body::Login(v1::Login::default()))));
        assert!(replay_safe(&env(Body::Ping(v1::Ping::default()))));
        assert!(replay_safe(&env(Body::SyncRequest(v1::SyncRequest::default()))));
        assert!(replay_safe(&env(Body::ListConversations(v1::ListConversations::default()))));
        assert!(replay_safe(&env(Body::GetReceipts(v1::GetReceipts::default()))));
        assert!(replay_safe(&env(Body::GetGroup(v1::GetGroup::default()))));
        assert!(!replay_safe(&env(Body::Send(v1::Send::default()))));
        assert!(!replay_safe(&env(Body::Receipt(v1::Receipt::default()))));
        assert!(!replay_safe(&env(Body::Recall(v1::Recall::default()))));
        assert!(!replay_safe(&env(Body::RefreshToken(v1::RefreshToken::default()))));
        assert!(!replay_safe(&env(Body::CreateGroup(v1::CreateGroup::default()))));
        assert!(!replay_safe(&Envelope::default()), "an empty frame waits too");
    }
}
