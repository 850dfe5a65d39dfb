//! [`Client`]: the cheap, cloneable handle the app calls; every call becomes a command for the
//! background connection task (see [`crate::connection`]).

use std::sync::Arc;

use bytes::Bytes;
use tern_proto::v1::{self, envelope::Body};
use tokio::sync::{mpsc, oneshot};

use crate::config::ClientConfig;
use crate::connection::{Command, Driver};
use crate::error::SdkError;
use crate::event::{Event, Target};
use crate::persist::{PendingSend, Persistence};
use crate::token::TokenState;
use crate::transport::Dialer;
use crate::transport::Transport;

/// Capacity of the command channel from handles to the connection task.
const COMMAND_CAPACITY: usize = 1024;

struct Shared {
    cfg: Arc<ClientConfig>,
    persistence: Arc<dyn Persistence>,
    user_id: String,
    device_id: String,
    token: Arc<TokenState>,
    dialer: Arc<Dialer>,
    first_scheme: crate::Scheme,
}

/// A connected Tern client. Clones share one connection task; the task stops when
/// [`Client::close`] is called, when the server kicks it for a duplicate login, when a re-login
/// is refused for good (bad or expired token), or when every handle is dropped.
///
/// Requests: sends and recalls survive reconnects (they are resent with the same
/// client_msg_id until acknowledged); any other request in flight when the connection drops
/// fails with [`SdkError::Closed`], and one issued while disconnected waits for the next login
/// (up to `request_timeout`).
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.shared.cfg.addr)
            .field("user_id", &self.shared.user_id)
            .field("device_id", &self.shared.device_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and logs in once (so that a bad token or an unreachable server is an error
    /// here), then keeps the connection up in a background task on the current tokio runtime.
    /// Persisted cursors and unacknowledged sends are loaded from `persistence`; the sends are
    /// resent after login. Events arrive on the returned receiver, starting with
    /// [`Event::Connected`]; drain it (see [`ClientConfig::event_capacity`]).
    pub async fn connect(
        cfg: ClientConfig,
        persistence: Arc<dyn Persistence>,
    ) -> Result<(Client, mpsc::Receiver<Event>), SdkError> {
        let cfg = Arc::new(cfg);
        let token = Arc::new(TokenState::new(cfg.token.clone(), cfg.token_provider.clone()));
        let dialer = Arc::new(Dialer::new(&cfg)?);
        let (transport, ok) = Transport::connect(&dialer, &cfg, token.current()).await?;
        let (commands, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (events_tx, events) = mpsc::channel(cfg.event_capacity.max(1));
        let driver = Driver::new(
            cfg.clone(),
            persistence.clone(),
            commands_rx,
            events_tx,
            ok.user_id.clone(),
            token.clone(),
            dialer.clone(),
        )?;
        let shared = Arc::new(Shared {
            cfg,
            persistence,
            user_id: ok.user_id.clone(),
            device_id: ok.device_id.clone(),
            token,
            dialer,
            first_scheme: transport.scheme,
        });
        tokio::spawn(driver.run((transport, ok)));
        Ok((Client { commands, shared }, events))
    }

    /// The logged-in user.
    pub fn user_id(&self) -> &str {
        &self.shared.user_id
    }

    /// The logged-in device.
    pub fn device_id(&self) -> &str {
        &self.shared.device_id
    }

    /// The configuration the client was connected with.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.cfg
    }

    /// Sends a message with a new random client_msg_id. It is persisted in the outbox before
    /// its first write, resent after reconnects, and the call waits for the ack up to
    /// `send_timeout`; on [`SdkError::Timeout`] the message stays in the outbox and is resent
    /// later (the app then sees it as an [`Event::Message`] once accepted).
    pub async fn send(
        &self,
        target: Target,
        content_type: &str,
        body: Bytes,
    ) -> Result<v1::SendAck, SdkError> {
        self.send_with_id(target, new_client_msg_id(), content_type, body).await
    }

    /// [`Client::send`] with the caller's own client_msg_id (1 to 64 bytes, unique per user):
    /// sending the same id again returns the original ack (`duplicate = true`).
    pub async fn send_with_id(
        &self,
        target: Target,
        client_msg_id: String,
        content_type: &str,
        body: Bytes,
    ) -> Result<v1::SendAck, SdkError> {
        let pending = PendingSend {
            client_msg_id,
            target,
            content_type: content_type.to_owned(),
            body,
            mention_user_ids: Vec::new(),
            mention_all: false,
        };
        self.send_pending(pending).await
    }

    /// [`Client::send`] of a message that mentions `users` (and every member with `all`,
    /// which only a group's owner and admins may).
    pub async fn send_mentioning(
        &self,
        target: Target,
        content_type: &str,
        body: Bytes,
        users: &[&str],
        all: bool,
    ) -> Result<v1::SendAck, SdkError> {
        let pending = PendingSend {
            client_msg_id: new_client_msg_id(),
            target,
            content_type: content_type.to_owned(),
            body,
            mention_user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
            mention_all: all,
        };
        self.send_pending(pending).await
    }

    /// Persists `pending` in the outbox and sends it (see [`Client::send`]).
    pub async fn send_pending(&self, pending: PendingSend) -> Result<v1::SendAck, SdkError> {
        let client_msg_id = pending.client_msg_id.clone();
        if !tern_proto::ids::is_valid_client_msg_id(&client_msg_id) {
            return Err(SdkError::InvalidArgument(format!(
                "client_msg_id must be 1 to {} bytes",
                tern_proto::ids::MAX_CLIENT_MSG_ID_BYTES
            )));
        }
        self.shared.persistence.put_pending(&pending).map_err(SdkError::Persistence)?;
        self.submit_send(client_msg_id, send_body(&pending), true).await
    }

    /// Recalls this user's message at `seq` (within the server's recall window). The recall is
    /// an event with its own seq, acknowledged like a send; it is resent across reconnects but
    /// not persisted.
    pub async fn recall(&self, conversation_id: &str, seq: u64) -> Result<v1::SendAck, SdkError> {
        let client_msg_id = new_client_msg_id();
        let body = Body::Recall(v1::Recall {
            conversation_id: conversation_id.to_owned(),
            seq,
            client_msg_id: client_msg_id.clone(),
        });
        self.submit_send(client_msg_id, body, false).await
    }

    /// Moves this user's "delivered up to `seq`" watermark; returns the resulting watermarks.
    pub async fn mark_delivered(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> Result<v1::ReceiptUpdate, SdkError> {
        self.receipt(conversation_id, v1::ReceiptKind::Delivered, seq).await
    }

    /// Moves this user's "read up to `seq`" watermark; returns the resulting watermarks.
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> Result<v1::ReceiptUpdate, SdkError> {
        self.receipt(conversation_id, v1::ReceiptKind::Read, seq).await
    }

    /// Every member's watermarks in a conversation.
    pub async fn get_receipts(&self, conversation_id: &str) -> Result<v1::Receipts, SdkError> {
        let body =
            Body::GetReceipts(v1::GetReceipts { conversation_id: conversation_id.to_owned() });
        match self.request(body).await?.body {
            Some(Body::Receipts(r)) => Ok(r),
            other => Err(unexpected("Receipts", other)),
        }
    }

    /// One raw sync page (`limit` 0: the server's default). It does not feed the client's own
    /// ordering and dedupe: the messages are returned, not emitted as events.
    pub async fn sync_page(
        &self,
        conversation_id: &str,
        from_seq: u64,
        limit: u32,
    ) -> Result<v1::SyncPage, SdkError> {
        let body = Body::SyncRequest(v1::SyncRequest {
            conversation_id: conversation_id.to_owned(),
            from_seq,
            limit,
        });
        match self.request(body).await?.body {
            Some(Body::SyncPage(p)) => Ok(p),
            other => Err(unexpected("SyncPage", other)),
        }
    }

    /// Every conversation of the user (all pages), ordered by id.
    pub async fn list_conversations(&self) -> Result<Vec<v1::ConversationSummary>, SdkError> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let body = Body::ListConversations(v1::ListConversations {
                after_conversation_id: after.clone(),
                limit: 0,
            });
            let list = match self.request(body).await?.body {
                Some(Body::ConversationList(l)) => l,
                other => return Err(unexpected("ConversationList", other)),
            };
            let has_more = list.has_more;
            let last = list.conversations.last().map(|c| c.conversation_id.clone());
            all.extend(list.conversations);
            match last {
                Some(last) if has_more && last > after => after = last,
                _ => return Ok(all),
            }
        }
    }

    /// Swaps the connection's token for `token` (a newer one of the same user and device)
    /// without reconnecting, and uses it for later reconnects. Returns the new token's expiry
    /// (Unix ms; 0: none). A refused token (`SdkError::Server` with `BadToken` or
    /// `TokenExpired`) changes nothing: the current token stays in force.
    pub async fn refresh_token(&self, token: impl Into<String>) -> Result<i64, SdkError> {
        let token = token.into();
        let body = Body::RefreshToken(v1::RefreshToken { token: token.clone() });
        match self.request(body).await?.body {
            Some(Body::TokenRefreshed(t)) => {
                self.shared.token.set(token);
                self.shared.token.set_expires_at_ms(t.expires_at_ms);
                Ok(t.expires_at_ms)
            }
            other => Err(unexpected("TokenRefreshed", other)),
        }
    }

    /// When the current token expires (its `exp`, Unix ms) as the server announced it at
    /// login or refresh; `None` when it does not expire.
    pub fn token_expires_at_ms(&self) -> Option<i64> {
        self.shared.token.expires_at_ms()
    }

    /// A raw request: `body` goes out with a fresh request id and the answer comes back as is,
    /// except that an Error answer becomes [`SdkError::Server`]. Waits up to `request_timeout`.
    pub async fn request(&self, body: Body) -> Result<v1::Envelope, SdkError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Request { body, reply }).await.map_err(|_| SdkError::Closed)?;
        match tokio::time::timeout(self.shared.cfg.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SdkError::Closed),
            Err(_) => Err(SdkError::Timeout),
        }
    }

    /// Tells the client that the device changed networks (Wi-Fi to cellular, say): a QUIC
    /// connection moves to a new local socket and keeps its session (QUIC connection
    /// migration: no re-login, nothing resent). TCP and TLS connections cannot move; they
    /// reconnect by themselves once the old path fails.
    pub fn network_changed(&self) -> Result<(), SdkError> {
        self.shared.dialer.rebind()
    }

    /// Which transport the client connected over at login (the current one after a
    /// reconnect may differ when several are configured).
    pub fn first_transport(&self) -> crate::Scheme {
        self.shared.first_scheme
    }

    /// Stops the background task and closes the socket. Unacknowledged sends stay persisted;
    /// calls waiting on this client fail with [`SdkError::Closed`]. Returns once the task has
    /// taken the command; calling it again is harmless.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn receipt(
        &self,
        conversation_id: &str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> Result<v1::ReceiptUpdate, SdkError> {
        let body = Body::Receipt(v1::Receipt {
            conversation_id: conversation_id.to_owned(),
            kind: kind as i32,
            seq,
        });
        match self.request(body).await?.body {
            Some(Body::ReceiptUpdate(r)) => Ok(r),
            other => Err(unexpected("ReceiptUpdate", other)),
        }
    }

    async fn submit_send(
        &self,
        client_msg_id: String,
        body: Body,
        persisted: bool,
    ) -> Result<v1::SendAck, SdkError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Send { client_msg_id, body, persisted, reply: Some(reply) };
        self.commands.send(cmd).await.map_err(|_| SdkError::Closed)?;
        match tokio::time::timeout(self.shared.cfg.send_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SdkError::Closed),
            Err(_) => Err(SdkError::Timeout),
        }
    }
}

/// The Send request body for a pending message.
pub(crate) fn send_body(p: &PendingSend) -> Body {
    let (conversation_id, peer_user_id) = match &p.target {
        Target::Conversation(id) => (id.clone(), String::new()),
        Target::Peer(user) => (String::new(), user.clone()),
    };
    Body::Send(v1::Send {
        conversation_id,
        peer_user_id,
        client_msg_id: p.client_msg_id.clone(),
        content_type: p.content_type.clone(),
        mention_user_ids: p.mention_user_ids.clone(),
        mention_all: p.mention_all,
        body: p.body.clone(),
    })
}

/// A new random client_msg_id: 128 bits as 32 hex digits.
pub fn new_client_msg_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

pub(crate) fn unexpected(wanted: &str, got: Option<Body>) -> SdkError {
    SdkError::Protocol(format!("expected {wanted}, got {got:?}"))
}
