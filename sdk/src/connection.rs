//! The background task behind a [`crate::Client`]: keeps one connection up (reconnecting with
//! backoff), drives the sans-IO client session (outbox, inbound order, heartbeat), matches
//! answers to requests and emits [`Event`]s.
//!
//! Per (re)login it resends the outbox (same client_msg_ids), sends the requests queued while
//! disconnected, lists the conversations (every page) and syncs each one whose latest seq is
//! past the local cursor. A gap in pushed messages (or an own ack past the cursor) syncs that
//! conversation. Requests in flight when a connection drops: sends and recalls stay in the
//! outbox and are resent after the next login; any other request fails with
//! [`SdkError::Closed`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tern_proto::session::client::{Backoff, Heartbeat, HeartbeatAction, InboundOrder, Outbox};
use tern_proto::v1::{self, ErrorCode, KickReason, envelope::Body};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::error::{SdkError, error_code, is_final_login_code, is_retryable_code};
use crate::event::Event;
use crate::persist::Persistence;
use crate::token::TokenState;
use crate::transport::{Dialer, LOGIN_REQUEST_ID, Transport};

/// How often the task checks timeouts of its own requests and runs delayed retries.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Delay before retrying a send, sync or list the server refused with a retryable error.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Syncs of one conversation that may make no progress in a row before its hole is skipped.
const MAX_SYNCS_WITHOUT_PROGRESS: u32 = 5;

/// The answer to a send or recall.
pub(crate) type AckReply = oneshot::Sender<Result<v1::SendAck, SdkError>>;
/// The answer to a raw request.
pub(crate) type EnvelopeReply = oneshot::Sender<Result<v1::Envelope, SdkError>>;

/// What a [`crate::Client`] handle asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A request that is not a send: answered once, failed with `Closed` if its connection drops.
    Request { body: Body, reply: EnvelopeReply },
    /// A send or recall (idempotent by client_msg_id): kept in the outbox until acknowledged.
    Send { client_msg_id: String, body: Body, persisted: bool, reply: Option<AckReply> },
    /// Stop: close the socket, fail what waits, end the task.
    Close { done: oneshot::Sender<()> },
}

/// One unacknowledged send or recall.
#[derive(Debug)]
pub(crate) struct OutboxEntry {
    /// A `Body::Send` or `Body::Recall`.
    body: Body,
    /// Whether it is in the persistence's outbox (sends are, recalls are not).
    persisted: bool,
    /// Callers waiting for the ack.
    waiters: Vec<AckReply>,
}

/// What a request id on the current connection was for.
#[derive(Debug)]
enum Pending {
    External(EnvelopeReply),
    Outbox { client_msg_id: String, sent_at: Instant },
    List { sent_at: Instant },
    Sync { conversation_id: String, sent_at: Instant },
    Ping { sent_at: Instant },
}

impl Pending {
    fn sent_at(&self) -> Option<Instant> {
        match self {
            Pending::External(_) => None,
            Pending::Outbox { sent_at, .. }
            | Pending::List { sent_at }
            | Pending::Sync { sent_at, .. }
            | Pending::Ping { sent_at } => Some(*sent_at),
        }
    }
}

/// Work put off until a later sweep.
#[derive(Debug)]
enum Later {
    Resend(String),
    Sync(String),
    List(String),
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// Reconnect.
    Disconnected(String),
    /// The token ran out (Kick TOKEN_EXPIRED): reconnect with a fresh one, or stop.
    TokenExpired,
    /// Stop the client.
    Stop,
}

/// State of the current connection only.
struct Conn {
    transport: Transport,
    heartbeat: Heartbeat,
    next_request_id: u64,
    pending: HashMap<u64, Pending>,
    syncing: HashSet<String>,
    sync_queue: VecDeque<String>,
    later: Vec<(Instant, Later)>,
    next_sweep: Instant,
}

impl Conn {
    fn new(transport: Transport, ok: &v1::LoginOk) -> Self {
        let now = Instant::now();
        Conn {
            transport,
            heartbeat: Heartbeat::from_login_ok(now.into_std(), ok),
            next_request_id: LOGIN_REQUEST_ID + 1,
            pending: HashMap::new(),
            syncing: HashSet::new(),
            sync_queue: VecDeque::new(),
            later: Vec::new(),
            next_sweep: now + SWEEP_EVERY,
        }
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Encodes a request into the output buffer and remembers what it was for.
    fn queue(&mut self, body: Body, pending: Pending) -> Result<(), (SdkError, Pending)> {
        let request_id = self.request_id();
        match self.transport.queue(&v1::Envelope { request_id, body: Some(body) }) {
            Ok(()) => {
                self.pending.insert(request_id, pending);
                Ok(())
            }
            Err(e) => Err((e, pending)),
        }
    }

    /// When the select loop must wake up at the latest.
    fn deadline(&self) -> Instant {
        let hb = self.heartbeat.next_deadline().map(Instant::from_std);
        hb.map_or(self.next_sweep, |d| d.min(self.next_sweep))
    }
}

/// The task's state across connections.
pub(crate) struct Driver {
    cfg: Arc<ClientConfig>,
    persistence: Arc<dyn Persistence>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    user_id: String,
    outbox: Outbox<OutboxEntry>,
    inbound: InboundOrder,
    backoff: Backoff,
    /// Requests issued while disconnected, sent after the next login.
    queued: VecDeque<(Body, EnvelopeReply)>,
    /// Syncs in a row of one conversation that made no progress.
    no_progress: HashMap<String, u32>,
    /// Callers of `close` to answer once the socket is closed.
    closers: Vec<oneshot::Sender<()>>,
    /// The login token (current, expiry, the app's provider).
    token: Arc<TokenState>,
    /// The current token is dead: get a fresh one before the next login.
    need_fresh_token: bool,
    /// Opens transports (keeps TLS sessions and the QUIC endpoint across reconnects).
    dialer: Arc<Dialer>,
}

impl Driver {
    /// A driver with persisted cursors and sends loaded (the persisted sends are resent after
    /// the first login).
    pub(crate) fn new(
        cfg: Arc<ClientConfig>,
        persistence: Arc<dyn Persistence>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        user_id: String,
        token: Arc<TokenState>,
        dialer: Arc<Dialer>,
    ) -> Result<Self, SdkError> {
        let mut inbound = InboundOrder::new(cfg.max_buffered_per_conversation);
        for (conv, seq) in persistence.load_cursors().map_err(SdkError::Persistence)? {
            inbound.set_cursor(&conv, seq);
        }
        let mut outbox = Outbox::new(cfg.max_outbox.max(1));
        for p in persistence.list_pending().map_err(SdkError::Persistence)? {
            let body = crate::client::send_body(&p);
            // Past the capacity the rest stay persisted and are resent after a restart.
            let entry = OutboxEntry { body, persisted: true, waiters: Vec::new() };
            if outbox.insert(p.client_msg_id, entry).is_err() {
                break;
            }
        }
        Ok(Driver {
            backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
            cfg,
            persistence,
            commands,
            events,
            user_id,
            outbox,
            inbound,
            queued: VecDeque::new(),
            no_progress: HashMap::new(),
            closers: Vec::new(),
            token,
            need_fresh_token: false,
            dialer,
        })
    }

    /// Runs until the client stops, starting with an already logged-in connection.
    pub(crate) async fn run(mut self, first: (Transport, v1::LoginOk)) {
        let mut next = Some(first);
        loop {
            let (transport, ok) = match next.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Some(c) => c,
                    None => break,
                },
            };
            self.backoff.reset();
            self.token.set_expires_at_ms(ok.token_expires_at_ms);
            self.emit(Event::Connected {
                user_id: ok.user_id.clone(),
                device_id: ok.device_id.clone(),
            })
            .await;
            let mut conn = Conn::new(transport, &ok);
            let end = self.serve(&mut conn).await;
            // Fail the requests of this connection; sends stay in the outbox.
            for (_, pending) in conn.pending.drain() {
                if let Pending::External(reply) = pending {
                    let _ = reply.send(Err(SdkError::Closed));
                }
            }
            conn.transport.shutdown().await;
            match end {
                End::Stop => break,
                End::TokenExpired if !self.token.has_provider() => {
                    tracing::warn!("the token expired and no token provider is set; stopping");
                    break;
                }
                End::TokenExpired => {
                    self.need_fresh_token = true;
                    let reason = "the token expired; getting a fresh one".to_owned();
                    self.emit(Event::Disconnected { reason }).await;
                }
                End::Disconnected(reason) => {
                    tracing::debug!(%reason, "disconnected");
                    self.emit(Event::Disconnected { reason }).await;
                }
            }
        }
        self.stop();
    }

    /// Fails everything that waits; the task ends after this.
    fn stop(&mut self) {
        for id in self.outbox.ids() {
            if let Some(entry) = self.outbox.remove(&id) {
                for w in entry.waiters {
                    let _ = w.send(Err(SdkError::Closed));
                }
            }
        }
        for (_, reply) in self.queued.drain(..) {
            let _ = reply.send(Err(SdkError::Closed));
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            fail_command(cmd);
        }
        for done in self.closers.drain(..) {
            let _ = done.send(());
        }
    }

    /// Waits out the backoff and logs in again, serving commands meanwhile. `None`: stop.
    async fn reconnect(&mut self) -> Option<(Transport, v1::LoginOk)> {
        loop {
            let delay = self.backoff.next_delay(fastrand::u64(..));
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => break,
                    cmd = self.commands.recv() => {
                        if !self.offline_command(cmd) {
                            return None;
                        }
                    }
                }
            }
            if self.need_fresh_token {
                if !self.token.fetch_fresh(self.cfg.request_timeout).await {
                    continue; // back off and ask again
                }
                self.need_fresh_token = false;
            }
            let (cfg, dialer) = (self.cfg.clone(), self.dialer.clone());
            let attempt = Transport::connect(&dialer, &cfg, self.token.current());
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    cmd = self.commands.recv() => {
                        if !self.offline_command(cmd) {
                            return None;
                        }
                    }
                }
            };
            match result {
                Ok(c) => return Some(c),
                Err(SdkError::Login { code, message })
                    if self.token.has_provider()
                        && matches!(code, ErrorCode::BadToken | ErrorCode::TokenExpired) =>
                {
                    tracing::info!(?code, %message, "login refused; asking for a fresh token");
                    self.need_fresh_token = true;
                }
                Err(SdkError::Login { code, message }) if is_final_login_code(code) => {
                    tracing::warn!(?code, %message, "login refused, stopping");
                    self.emit(Event::Disconnected {
                        reason: format!("login refused ({code:?}): {message}"),
                    })
                    .await;
                    return None;
                }
                Err(e) => tracing::debug!(error = %e, "reconnect failed"),
            }
        }
    }

    /// A command while disconnected. `false`: stop.
    fn offline_command(&mut self, cmd: Option<Command>) -> bool {
        match cmd {
            None => false,
            Some(Command::Close { done }) => {
                self.closers.push(done);
                false
            }
            Some(Command::Request { body, reply }) => {
                if self.queued.len() >= self.cfg.max_queued_requests {
                    let _ = reply.send(Err(SdkError::Closed));
                } else {
                    self.queued.push_back((body, reply));
                }
                true
            }
            Some(Command::Send { client_msg_id, body, persisted, reply }) => {
                self.add_to_outbox(client_msg_id, body, persisted, reply);
                true
            }
        }
    }

    /// Puts a send into the outbox (merging waiters for a client_msg_id already there). Returns
    /// whether it is new (and must be written).
    fn add_to_outbox(
        &mut self,
        client_msg_id: String,
        body: Body,
        persisted: bool,
        reply: Option<AckReply>,
    ) -> bool {
        if !self.outbox.contains(&client_msg_id) && self.outbox.len() >= self.outbox.capacity() {
            if persisted {
                self.forget_persisted(&client_msg_id);
            }
            if let Some(reply) = reply {
                let _ = reply.send(Err(SdkError::OutboxFull { capacity: self.outbox.capacity() }));
            }
            return false;
        }
        let entry = OutboxEntry { body, persisted, waiters: reply.into_iter().collect() };
        match self.outbox.insert(client_msg_id.clone(), entry) {
            Ok(None) => true,
            Ok(Some(dup)) => {
                if let Some(existing) = self.outbox.get_mut(&client_msg_id) {
                    existing.waiters.extend(dup.waiters);
                }
                false
            }
            // Checked just above.
            Err(_) => false,
        }
    }

    fn forget_persisted(&self, client_msg_id: &str) {
        if let Err(e) = self.persistence.remove_pending(client_msg_id) {
            tracing::warn!(error = %e, client_msg_id, "could not remove a pending send");
        }
    }

    /// Serves one logged-in connection until it ends.
    async fn serve(&mut self, conn: &mut Conn) -> End {
        // Resend the outbox, send what was queued, then catch up.
        for id in self.outbox.ids() {
            self.write_outbox_entry(conn, &id);
        }
        while let Some((body, reply)) = self.queued.pop_front() {
            queue_external(conn, body, reply);
        }
        self.start_list(conn, String::new());
        loop {
            if conn.transport.has_queued() {
                // A server that stops reading must not stall the task for good.
                match tokio::time::timeout(self.cfg.request_timeout, conn.transport.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return End::Disconnected(format!("write failed: {e}")),
                    Err(_) => return End::Disconnected("write timed out".to_owned()),
                }
                conn.heartbeat.on_sent(Instant::now().into_std());
            }
            let deadline = conn.deadline();
            let step = tokio::select! {
                frame = conn.transport.read_frame() => match frame {
                    Ok(Some(env)) => {
                        conn.heartbeat.on_received(Instant::now().into_std());
                        self.on_frame(conn, env).await
                    }
                    Ok(None) => Some(End::Disconnected("the server closed the connection".to_owned())),
                    Err(e) => Some(End::Disconnected(format!("read failed: {e}"))),
                },
                cmd = self.commands.recv() => self.on_command(conn, cmd),
                () = tokio::time::sleep_until(deadline) => self.on_tick(conn).await,
            };
            if let Some(end) = step {
                return end;
            }
        }
    }

    fn on_command(&mut self, conn: &mut Conn, cmd: Option<Command>) -> Option<End> {
        match cmd {
            None => Some(End::Stop),
            Some(Command::Close { done }) => {
                self.closers.push(done);
                Some(End::Stop)
            }
            Some(Command::Request { body, reply }) => {
                queue_external(conn, body, reply);
                None
            }
            Some(Command::Send { client_msg_id, body, persisted, reply }) => {
                if self.add_to_outbox(client_msg_id.clone(), body, persisted, reply) {
                    self.write_outbox_entry(conn, &client_msg_id);
                }
                None
            }
        }
    }

    /// Queues the outbox entry's request; an entry that cannot be encoded is failed for good.
    fn write_outbox_entry(&mut self, conn: &mut Conn, client_msg_id: &str) {
        let Some(entry) = self.outbox.get(client_msg_id) else {
            return;
        };
        let pending =
            Pending::Outbox { client_msg_id: client_msg_id.to_owned(), sent_at: Instant::now() };
        if let Err((e, _)) = conn.queue(entry.body.clone(), pending) {
            self.fail_outbox_entry(client_msg_id, e);
        }
    }

    fn fail_outbox_entry(&mut self, client_msg_id: &str, err: SdkError) {
        let Some(entry) = self.outbox.remove(client_msg_id) else {
            return;
        };
        if entry.persisted {
            self.forget_persisted(client_msg_id);
        }
        let message = err.to_string();
        let mut waiters = entry.waiters.into_iter();
        if let Some(first) = waiters.next() {
            let _ = first.send(Err(err));
        }
        for w in waiters {
            let _ = w.send(Err(SdkError::Protocol(message.clone())));
        }
    }

    async fn on_tick(&mut self, conn: &mut Conn) -> Option<End> {
        let now = Instant::now();
        match conn.heartbeat.poll(now.into_std()) {
            HeartbeatAction::Reconnect => {
                return Some(End::Disconnected("the server was silent too long".to_owned()));
            }
            HeartbeatAction::Ping => {
                let ping = Body::Ping(v1::Ping { client_time_ms: unix_ms() });
                if let Err((e, _)) = conn.queue(ping, Pending::Ping { sent_at: now }) {
                    return Some(End::Disconnected(format!("could not encode a ping: {e}")));
                }
                // Count it as sent now so that the deadline moves even before the flush.
                conn.heartbeat.on_sent(now.into_std());
            }
            HeartbeatAction::None => {}
        }
        if now >= conn.next_sweep {
            conn.next_sweep = now + SWEEP_EVERY;
            // Our own requests unanswered for too long: the connection is not healthy.
            let timeout = self.cfg.request_timeout;
            if conn.pending.values().any(|p| p.sent_at().is_some_and(|t| now >= t + timeout)) {
                return Some(End::Disconnected("a request went unanswered".to_owned()));
            }
            conn.pending.retain(|_, p| !matches!(p, Pending::External(reply) if reply.is_closed()));
            let due: Vec<Later> = {
                let (due, keep): (Vec<_>, Vec<_>) =
                    conn.later.drain(..).partition(|(at, _)| *at <= now);
                conn.later = keep;
                due.into_iter().map(|(_, work)| work).collect()
            };
            for work in due {
                match work {
                    Later::Resend(id) => self.write_outbox_entry(conn, &id),
                    Later::Sync(conv) => self.request_sync(conn, conv),
                    Later::List(after) => self.start_list(conn, after),
                }
            }
        }
        None
    }

    async fn on_frame(&mut self, conn: &mut Conn, env: v1::Envelope) -> Option<End> {
        let fatal = matches!(&env.body, Some(Body::Error(e)) if e.fatal);
        let end = if env.request_id == 0 {
            self.on_push(conn, env).await
        } else {
            match conn.pending.remove(&env.request_id) {
                Some(pending) => self.on_answer(conn, pending, env).await,
                None => None,
            }
        };
        if end.is_none() && fatal {
            return Some(End::Disconnected(
                "the server closed the connection after an error".to_owned(),
            ));
        }
        end
    }

    async fn on_push(&mut self, conn: &mut Conn, env: v1::Envelope) -> Option<End> {
        match env.body {
            Some(Body::Deliver(d)) => {
                if let Some(msg) = d.message {
                    let conv = msg.conversation_id.clone();
                    let released = self.inbound.on_message(msg);
                    self.release(&conv, released).await;
                    self.sync_gap_later(conn, &conv);
                }
                None
            }
            Some(Body::ReceiptUpdate(r)) => {
                self.emit(Event::Receipt(r)).await;
                None
            }
            Some(Body::SyncHint(_)) => {
                // Pushes may have been lost: catch up exactly as after a login.
                self.start_list(conn, String::new());
                None
            }
            Some(Body::Kick(k)) => {
                let reason = KickReason::try_from(k.reason).unwrap_or(KickReason::Unspecified);
                self.emit(Event::Kicked { reason }).await;
                if matches!(
                    reason,
                    KickReason::DuplicateLogin | KickReason::LoggedOut | KickReason::DeviceReplaced
                ) {
                    // Reconnecting would fight the other instance (duplicate), be refused
                    // (logged out) or replace the newer device in turn: the app decides.
                    Some(End::Stop)
                } else if reason == KickReason::TokenExpired {
                    Some(End::TokenExpired)
                } else {
                    Some(End::Disconnected(format!("kicked ({reason:?}): {}", k.message)))
                }
            }
            Some(Body::Error(e)) => {
                tracing::warn!(code = ?error_code(e.code), message = %e.message, "server error");
                None
            }
            _ => None,
        }
    }

    async fn on_answer(
        &mut self,
        conn: &mut Conn,
        pending: Pending,
        env: v1::Envelope,
    ) -> Option<End> {
        match pending {
            Pending::External(reply) => {
                let result = match env.body {
                    Some(Body::Error(e)) => Err(SdkError::from_server(&e)),
                    _ => Ok(env),
                };
                let _ = reply.send(result);
            }
            Pending::Ping { .. } => {}
            Pending::Outbox { client_msg_id, .. } => match env.body {
                Some(Body::SendAck(ack)) => self.on_ack(conn, ack).await,
                Some(Body::Error(e)) => {
                    let code = error_code(e.code);
                    if is_retryable_code(code) {
                        conn.later
                            .push((Instant::now() + RETRY_AFTER, Later::Resend(client_msg_id)));
                    } else {
                        self.fail_outbox_entry(&client_msg_id, SdkError::from_server(&e));
                    }
                }
                _ => self.fail_outbox_entry(
                    &client_msg_id,
                    SdkError::Protocol(
                        "a send was answered by something else than SendAck".to_owned(),
                    ),
                ),
            },
            Pending::List { .. } => match env.body {
                Some(Body::ConversationList(list)) => {
                    for c in &list.conversations {
                        self.inbound.note_last_seq(&c.conversation_id, c.last_seq);
                        self.request_sync_if_needed(conn, &c.conversation_id);
                    }
                    if list.has_more
                        && let Some(last) = list.conversations.last()
                    {
                        self.start_list(conn, last.conversation_id.clone());
                    }
                }
                Some(Body::Error(e)) if is_retryable_code(error_code(e.code)) => {
                    conn.later.push((Instant::now() + RETRY_AFTER, Later::List(String::new())));
                }
                other => tracing::warn!(answer = ?other, "listing conversations failed"),
            },
            Pending::Sync { conversation_id, .. } => {
                conn.syncing.remove(&conversation_id);
                match env.body {
                    Some(Body::SyncPage(mut page))
                        if page.conversation_id.is_empty()
                            || page.conversation_id == conversation_id =>
                    {
                        page.conversation_id = conversation_id;
                        self.on_sync_page(conn, page).await;
                    }
                    Some(Body::Error(e)) if is_retryable_code(error_code(e.code)) => {
                        conn.later
                            .push((Instant::now() + RETRY_AFTER, Later::Sync(conversation_id)));
                    }
                    other => {
                        tracing::warn!(conversation_id, answer = ?other, "sync failed");
                    }
                }
                self.pump_syncs(conn);
            }
        }
        None
    }

    async fn on_ack(&mut self, conn: &mut Conn, ack: v1::SendAck) {
        let Some(entry) = self.outbox.remove(&ack.client_msg_id) else {
            // Already settled (e.g. found by sync): nothing waits for it.
            return;
        };
        if entry.persisted {
            self.forget_persisted(&ack.client_msg_id);
        }
        // Settle the order (and the saved cursor) before answering, so that a caller that
        // got its ack sees the cursor past it. A caller that stops waiting between this check
        // and the answer misses both the ack and the event.
        let waited = entry.waiters.iter().any(|w| !w.is_closed());
        let released = if waited {
            self.inbound.on_own_ack(&ack.conversation_id, ack.seq)
        } else {
            // Nobody waits any more: the app learns of the message as an event.
            self.inbound.on_message(own_message(&self.user_id, &entry.body, &ack))
        };
        self.release(&ack.conversation_id, released).await;
        self.save_cursor(&ack.conversation_id);
        answer_waiters(entry.waiters, &ack);
        self.sync_gap_later(conn, &ack.conversation_id);
    }

    async fn on_sync_page(&mut self, conn: &mut Conn, page: v1::SyncPage) {
        let conv = page.conversation_id.clone();
        let before = self.inbound.cursor(&conv);
        let released = self.inbound.on_sync_page(&page);
        self.release(&conv, released).await;
        if self.inbound.needs_sync(&conv).is_none() {
            self.no_progress.remove(&conv);
            return;
        }
        if self.inbound.cursor(&conv) > before {
            self.no_progress.remove(&conv);
            self.request_sync(conn, conv);
            return;
        }
        let tries = self.no_progress.entry(conv.clone()).or_default();
        *tries += 1;
        if *tries >= MAX_SYNCS_WITHOUT_PROGRESS {
            tracing::warn!(conversation_id = %conv, "sync makes no progress; skipping the hole");
            self.no_progress.remove(&conv);
            let released = self.inbound.skip_gap(&conv);
            self.release(&conv, released).await;
        } else {
            let delay = RETRY_AFTER * *tries;
            conn.later.push((Instant::now() + delay, Later::Sync(conv)));
        }
    }

    fn start_list(&mut self, conn: &mut Conn, after: String) {
        let body = Body::ListConversations(v1::ListConversations {
            after_conversation_id: after,
            limit: 0,
        });
        if let Err((e, _)) = conn.queue(body, Pending::List { sent_at: Instant::now() }) {
            tracing::warn!(error = %e, "could not encode ListConversations");
        }
    }

    fn request_sync_if_needed(&mut self, conn: &mut Conn, conv: &str) {
        if self.inbound.needs_sync(conv).is_some() {
            self.request_sync(conn, conv.to_owned());
        }
    }

    /// A gap seen on the live path: sync it after `gap_grace` if it is still open then (the
    /// queued sync re-checks the gap before it is sent).
    fn sync_gap_later(&mut self, conn: &mut Conn, conv: &str) {
        if self.inbound.needs_sync(conv).is_none()
            || conn.syncing.contains(conv)
            || conn.sync_queue.iter().any(|c| c == conv)
            || conn.later.iter().any(|(_, l)| matches!(l, Later::Sync(c) if c == conv))
        {
            return;
        }
        conn.later.push((Instant::now() + self.cfg.gap_grace, Later::Sync(conv.to_owned())));
    }

    fn request_sync(&mut self, conn: &mut Conn, conv: String) {
        if !conn.syncing.contains(&conv) && !conn.sync_queue.contains(&conv) {
            conn.sync_queue.push_back(conv);
        }
        self.pump_syncs(conn);
    }

    /// Starts queued syncs up to the concurrency limit.
    fn pump_syncs(&mut self, conn: &mut Conn) {
        while conn.syncing.len() < self.cfg.max_concurrent_syncs.max(1) {
            let Some(conv) = conn.sync_queue.pop_front() else {
                return;
            };
            let Some(from_seq) = self.inbound.needs_sync(&conv) else {
                continue;
            };
            let body = Body::SyncRequest(v1::SyncRequest {
                conversation_id: conv.clone(),
                from_seq,
                limit: self.cfg.sync_page_limit,
            });
            let pending = Pending::Sync { conversation_id: conv.clone(), sent_at: Instant::now() };
            match conn.queue(body, pending) {
                Ok(()) => {
                    conn.syncing.insert(conv);
                }
                Err((e, _)) => tracing::warn!(error = %e, "could not encode a SyncRequest"),
            }
        }
    }

    /// Hands released messages of one conversation to the app and saves its cursor. A message
    /// that is this user's own pending send settles that send instead (its ack was lost): it is
    /// emitted only when nobody waits for that ack any more.
    async fn release(&mut self, conv: &str, released: Vec<v1::Message>) {
        if released.is_empty() {
            return;
        }
        for msg in released {
            if msg.sender_user_id == self.user_id
                && let Some(entry) = self.outbox.remove(&msg.client_msg_id)
            {
                if entry.persisted {
                    self.forget_persisted(&msg.client_msg_id);
                }
                let ack = v1::SendAck {
                    conversation_id: msg.conversation_id.clone(),
                    seq: msg.seq,
                    server_time_ms: msg.server_time_ms,
                    client_msg_id: msg.client_msg_id.clone(),
                    duplicate: true,
                };
                if answer_waiters(entry.waiters, &ack) {
                    continue;
                }
            }
            self.emit(Event::Message(msg)).await;
        }
        self.save_cursor(conv);
    }

    fn save_cursor(&self, conv: &str) {
        let cursor = self.inbound.cursor(conv);
        if cursor == 0 {
            return;
        }
        if let Err(e) = self.persistence.save_cursor(conv, cursor) {
            tracing::warn!(error = %e, conversation_id = conv, "could not save a cursor");
        }
    }

    /// Queues an event; waits while the channel is full. An app that dropped its receiver just
    /// misses events.
    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }
}

/// Queues a raw request on the connection, or fails it at once if it cannot be encoded.
fn queue_external(conn: &mut Conn, body: Body, reply: EnvelopeReply) {
    if reply.is_closed() {
        return;
    }
    if let Err((e, Pending::External(reply))) = conn.queue(body, Pending::External(reply)) {
        let _ = reply.send(Err(e));
    }
}

/// Gives the ack to every waiter; whether at least one still waited.
fn answer_waiters(waiters: Vec<AckReply>, ack: &v1::SendAck) -> bool {
    let mut taken = false;
    for w in waiters {
        taken |= w.send(Ok(ack.clone())).is_ok();
    }
    taken
}

/// The message an acknowledged own send became, rebuilt from the outbox entry and the ack.
fn own_message(user_id: &str, body: &Body, ack: &v1::SendAck) -> v1::Message {
    let mut msg = v1::Message {
        conversation_id: ack.conversation_id.clone(),
        seq: ack.seq,
        sender_user_id: user_id.to_owned(),
        client_msg_id: ack.client_msg_id.clone(),
        server_time_ms: ack.server_time_ms,
        ..Default::default()
    };
    match body {
        Body::Send(s) => {
            msg.kind = v1::MessageKind::Normal as i32;
            msg.content_type = s.content_type.clone();
            msg.body = s.body.clone();
        }
        Body::Recall(r) => {
            msg.kind = v1::MessageKind::Recall as i32;
            msg.recalled_seq = r.seq;
        }
        _ => {}
    }
    msg
}

/// Fails a command that arrived after the task decided to stop.
fn fail_command(cmd: Command) {
    match cmd {
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(SdkError::Closed));
        }
        Command::Send { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(SdkError::Closed));
            }
        }
        Command::Close { done } => {
            let _ = done.send(());
        }
    }
}

/// Wall clock in Unix milliseconds (for Ping only; 0 if the clock is before 1970).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
