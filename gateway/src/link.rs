//! The gateway's side of the distributed mode: one link (TCP, `tern.link.v1` frames) to every
//! live dispatch worker, requests spread over them, pushes from them delivered to local
//! connections, and this gateway's connections published in Redis presence.
//!
//! Routing: a request goes to the worker chosen by rendezvous hashing of the user id over the
//! live links, so a user's requests keep their order while its worker lives and move to another
//! worker (and only those users' requests move) when it dies. A request whose link fails before
//! it is answered is sent again on another link: sends and recalls are deduplicated by
//! (sender, client_msg_id), receipts are monotonic, the rest are reads, so a retry is always
//! safe.
//!
//! Authentication: every link starts with the mutual handshake of
//! `tern_proto::session::link`. A link joins the live set (and gets Requests, and has its
//! Pushes and Kicks delivered) only after the worker proved that it holds the cluster secret
//! for the very address this gateway dialed; a worker that does not is logged, counted
//! (`tern_gateway_link_auth_failures_total`) and dialed again only after a longer backoff.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_presence::{Entry, Presence};
use tern_proto::FrameDecoder;
use tern_proto::link::v1::{self as link, link_frame::Body as LinkBody};
use tern_proto::session::link::LinkSecrets;
use tern_proto::session::server::error as error_frame;
use tern_proto::v1::{Envelope, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use self::auth::{LinkDown, authenticate};
use self::presence::publish_presence;
use crate::registry::Registry;
use crate::upstream::{BoxFuture, Reply, RequestCtx, Upstream};

mod auth;
mod presence;

/// Largest link frame accepted.
const MAX_LINK_FRAME: usize = 16 * 1024 * 1024;
/// Frames queued for one link.
const LINK_QUEUE: usize = 65_536;
/// How many links a request tries before it is answered UNAVAILABLE.
const MAX_ATTEMPTS: usize = 4;

/// Link settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This gateway's id, as published in presence.
    pub gateway_id: String,
    /// How long a request waits for its answer on one link before it is answered UNAVAILABLE.
    pub request_timeout: Duration,
    /// Delay before reconnecting a failed link (grows to 10x while it keeps failing, to 100x
    /// while the worker fails authentication).
    pub reconnect_delay: Duration,
    /// The cluster secrets (the first proves this gateway; all are accepted from workers).
    /// With [`LinkSecrets::insecure_development`] only loopback workers are linked.
    pub secrets: LinkSecrets,
    /// How long a worker has to complete the handshake.
    pub handshake_timeout: Duration,
}

/// Link and presence counters.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    /// Requests sent again on another link after their link failed.
    pub retries: AtomicU64,
    /// Requests answered UNAVAILABLE because no link could take them.
    pub unavailable: AtomicU64,
    /// Push frames received from workers.
    pub pushes: AtomicU64,
    /// Links established (including reconnects).
    pub links_up: AtomicU64,
    /// Presence writes that failed (retried at the next refresh).
    pub presence_errors: AtomicU64,
    /// SyncHints sent to clients after presence was restored.
    pub sync_hints: AtomicU64,
    /// Worker links refused in the handshake (bad proof, wrong address, timeout, refused).
    pub auth_failures: AtomicU64,
}

/// A request waiting for its answer, with what a retry on another link needs.
struct Pending {
    reply: Reply,
    request_id: u64,
    user: String,
    /// The encoded Request (its link id is the key it waits under).
    frame: Bytes,
    /// Links that failed while this request was on them.
    tried: Vec<String>,
    /// Rounds used so far: a wait on a link, or a wait for any link to come up.
    rounds: usize,
}

/// The requests waiting on one link: by link id, and their deadlines in insertion order
/// (every deadline is `request_timeout` after its insertion, so the queue is sorted; answered
/// entries are dropped from its front as answers come, and skipped when their deadline comes).
#[derive(Default)]
struct PendingSet {
    by_id: HashMap<u64, Pending>,
    deadlines: VecDeque<(Instant, u64)>,
    /// Set when the link went down: nothing is added any more.
    closed: bool,
}

/// One worker link.
struct WorkerLink {
    addr: String,
    tx: mpsc::Sender<Bytes>,
    pending: Mutex<PendingSet>,
}

impl PendingSet {
    /// Takes the request answered under link id `id`, dropping answered deadlines from the
    /// front so the queue stays as long as the oldest unanswered request makes it.
    fn answered(&mut self, id: u64) -> Option<Pending> {
        let p = self.by_id.remove(&id);
        while let Some(&(_, front)) = self.deadlines.front() {
            if self.by_id.contains_key(&front) {
                break;
            }
            self.deadlines.pop_front();
        }
        p
    }
}

impl WorkerLink {
    fn pending(&self) -> std::sync::MutexGuard<'_, PendingSet> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    cfg: LinkConfig,
    registry: Arc<Registry>,
    presence: Option<Presence>,
    presence_tx: Option<mpsc::Sender<PresenceOp>>,
    /// Live links by worker address.
    live: Mutex<BTreeMap<String, Arc<WorkerLink>>>,
    /// Addresses with a running link task, and their stop flags.
    managed: Mutex<HashMap<String, Arc<AtomicBool>>>,
    next_id: AtomicU64,
    metrics: Arc<LinkMetrics>,
    /// The runtime the link tasks (and the rare waits for a link) run on.
    rt: tokio::runtime::Handle,
}

/// The distributed-mode [`Upstream`]. Cheap to clone.
#[derive(Clone)]
pub struct LinkUpstream {
    inner: Arc<Inner>,
}

enum PresenceOp {
    /// A login; answered once its batch is published (or failed).
    Up(Entry, oneshot::Sender<()>),
    Down(Entry),
}

impl LinkUpstream {
    /// Creates the upstream; starts the presence publisher when `presence` is given. Call
    /// [`LinkUpstream::set_workers`] (static configuration) or
    /// [`LinkUpstream::discover_workers`] to link to workers.
    pub fn new(cfg: LinkConfig, registry: Arc<Registry>, presence: Option<Presence>) -> Self {
        let metrics = Arc::new(LinkMetrics::default());
        let (presence_tx, presence_rx) = match &presence {
            Some(_) => {
                let (tx, rx) = mpsc::channel(65_536);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            cfg,
            registry,
            presence: presence.clone(),
            presence_tx,
            live: Mutex::new(BTreeMap::new()),
            managed: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
            rt: tokio::runtime::Handle::current(),
        });
        if let (Some(p), Some(rx)) = (presence, presence_rx) {
            tokio::spawn(publish_presence(inner.clone(), p, rx));
        }
        Self { inner }
    }

    /// Counters.
    pub fn metrics(&self) -> Arc<LinkMetrics> {
        self.inner.metrics.clone()
    }

    /// Workers linked now, by address.
    pub fn live_workers(&self) -> Vec<String> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Keeps a link to each address in `addrs` (and stops links to addresses not listed).
    pub fn set_workers(&self, addrs: &[String]) {
        let mut managed = self.inner.managed.lock().unwrap_or_else(|p| p.into_inner());
        managed.retain(|addr, stop| {
            let keep = addrs.contains(addr);
            if !keep {
                stop.store(true, Relaxed);
            }
            keep
        });
        for addr in addrs {
            if !managed.contains_key(addr) {
                let stop = Arc::new(AtomicBool::new(false));
                managed.insert(addr.clone(), stop.clone());
                tokio::spawn(keep_link(self.inner.clone(), addr.clone(), stop));
            }
        }
    }

    /// Follows worker announcements in presence Redis: polls every `every` and links to the
    /// live workers.
    pub fn discover_workers(&self, every: Duration) {
        let Some(presence) = self.inner.presence.clone() else { return };
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match presence.list_workers().await {
                    Ok(workers) => {
                        let addrs: Vec<String> = workers.into_iter().map(|(_, a)| a).collect();
                        this.set_workers(&addrs);
                    }
                    Err(e) => tracing::warn!(error = %e, "worker discovery failed"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

impl Inner {
    /// Picks the live link for `user` by rendezvous hashing, skipping `tried`.
    fn pick(&self, user: &str, tried: &[String]) -> Option<Arc<WorkerLink>> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.values()
            .filter(|l| !tried.contains(&l.addr))
            .max_by_key(|l| {
                let mut h = DefaultHasher::new();
                (user, &l.addr).hash(&mut h);
                h.finish()
            })
            .cloned()
    }

    /// Sends `p` (link id `id`) on the best live link it has not tried; gives it back when no
    /// link takes it.
    fn send_once(&self, id: u64, p: Pending) -> Result<(), Pending> {
        let mut skip = p.tried.clone();
        while let Some(link) = self.pick(&p.user, &skip) {
            {
                let mut set = link.pending();
                if !set.closed && link.tx.try_send(p.frame.clone()).is_ok() {
                    // Under the lock: the reader cannot take the answer before it is waited for.
                    set.deadlines.push_back((Instant::now() + self.cfg.request_timeout, id));
                    set.by_id.insert(id, p);
                    return Ok(());
                }
            }
            skip.push(link.addr.clone());
        }
        Err(p)
    }

    /// Sends `p` on a link, or, when none takes it, waits `reconnect_delay` and tries again
    /// (answering UNAVAILABLE once its rounds are used up).
    fn send(self: &Arc<Self>, id: u64, p: Pending) {
        let Err(mut p) = self.send_once(id, p) else { return };
        p.rounds += 1;
        if p.rounds >= MAX_ATTEMPTS {
            return self.unavailable(p);
        }
        // No live link right now (workers restarting): wait a little and retry.
        let inner = self.clone();
        self.rt.spawn(async move {
            tokio::time::sleep(inner.cfg.reconnect_delay).await;
            inner.send(id, p);
        });
    }

    /// The link `addr` failed before answering `p`: try another worker.
    fn retry(self: &Arc<Self>, id: u64, mut p: Pending, addr: &str) {
        self.metrics.retries.fetch_add(1, Relaxed);
        p.rounds += 1;
        if p.rounds >= MAX_ATTEMPTS {
            return self.unavailable(p);
        }
        p.tried.push(addr.to_owned());
        match self.send_once(id, p) {
            Ok(()) => {}
            Err(mut p) => {
                // Every live link was tried; the failed ones may be back soon.
                p.tried.clear();
                self.send(id, p);
            }
        }
    }

    fn unavailable(&self, p: Pending) {
        self.metrics.unavailable.fetch_add(1, Relaxed);
        (p.reply)(error_frame(
            p.request_id,
            ErrorCode::Unavailable,
            "no dispatch worker available",
            false,
        ));
    }
}

impl Upstream for LinkUpstream {
    fn check_in(&self, ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope> {
        self.request(ctx, env)
    }

    fn request(&self, ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope> {
        let (tx, rx) = oneshot::channel();
        let request_id = env.request_id;
        self.submit(ctx, env, Box::new(move |answer| drop(tx.send(answer))));
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                error_frame(
                    request_id,
                    ErrorCode::Unavailable,
                    "no dispatch worker available",
                    false,
                )
            })
        })
    }

    /// Queues the request on its worker's link now (so a connection's requests keep their
    /// order) and leaves the answer to the link: its reader calls `reply`, its expiry task
    /// answers UNAVAILABLE after `request_timeout`, its failure sends the request again on
    /// another link. No task per request.
    fn submit(&self, ctx: &Arc<RequestCtx>, env: Envelope, reply: Reply) {
        let request_id = env.request_id;
        let id = self.inner.next_id.fetch_add(1, Relaxed);
        let frame = tern_proto::encode_to_bytes(
            &link::LinkFrame {
                id,
                body: Some(LinkBody::Request(link::Request {
                    user_id: ctx.user_id.clone(),
                    device_id: ctx.device_id.clone(),
                    connection_id: ctx.connection_id,
                    envelope: Some(env),
                })),
            },
            usize::MAX,
        )
        .unwrap_or_default();
        let p = Pending {
            reply,
            request_id,
            user: ctx.user_id.clone(),
            frame,
            tried: Vec::new(),
            rounds: 0,
        };
        self.inner.send(id, p);
    }

    fn connected(&self, ctx: &Arc<RequestCtx>) -> BoxFuture<'static, ()> {
        let Some(tx) = &self.inner.presence_tx else { return Box::pin(std::future::ready(())) };
        let (done, published) = oneshot::channel();
        // A full queue means the publisher is far behind: the refresh will cover this login.
        let _ = tx.try_send(PresenceOp::Up(self.entry(ctx), done));
        Box::pin(async move {
            let _ = published.await;
        })
    }

    fn disconnected(&self, ctx: &Arc<RequestCtx>) {
        if let Some(tx) = &self.inner.presence_tx {
            let _ = tx.try_send(PresenceOp::Down(self.entry(ctx)));
        }
    }
}

impl LinkUpstream {
    fn entry(&self, ctx: &RequestCtx) -> Entry {
        Entry {
            user_id: ctx.user_id.clone(),
            device_id: ctx.device_id.clone(),
            gateway_id: self.inner.cfg.gateway_id.clone(),
            connection_id: ctx.connection_id,
        }
    }
}

/// Sends a link frame on any live worker link (for frames any worker can forward).
fn send_any(inner: &Inner, body: LinkBody) -> bool {
    let frame =
        tern_proto::encode_to_bytes(&link::LinkFrame { id: 0, body: Some(body) }, usize::MAX)
            .unwrap_or_default();
    let live = inner.live.lock().unwrap_or_else(|p| p.into_inner());
    live.values().any(|l| l.tx.try_send(frame.clone()).is_ok())
}

/// Keeps one worker link up until `stop` is set.
async fn keep_link(inner: Arc<Inner>, addr: String, stop: Arc<AtomicBool>) {
    let mut delay = inner.cfg.reconnect_delay;
    while !stop.load(Relaxed) {
        match run_link(&inner, &addr, &stop).await {
            Ok(()) => delay = inner.cfg.reconnect_delay,
            Err(LinkDown::Refused) => delay = (delay * 4).min(inner.cfg.reconnect_delay * 100),
            Err(LinkDown::Io(e)) => {
                tracing::debug!(worker = %addr, error = %e, "worker link down");
                delay = (delay * 2).min(inner.cfg.reconnect_delay * 10);
            }
        }
        tokio::time::sleep(delay).await;
    }
}

async fn run_link(inner: &Arc<Inner>, addr: &str, stop: &AtomicBool) -> Result<(), LinkDown> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let worker_id = authenticate(inner, addr, &mut rd, &mut wr, &mut buf).await?;
    // Authenticated: start writing, take requests, deliver what the worker pushes.
    let (tx, rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
    let link = Arc::new(WorkerLink {
        addr: addr.to_owned(),
        tx,
        pending: Mutex::new(PendingSet::default()),
    });
    let mut writer = tokio::spawn(write_link(rx, wr));
    let expiry = tokio::spawn(expire(inner.clone(), link.clone()));
    inner.live.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_owned(), link.clone());
    inner.metrics.links_up.fetch_add(1, Relaxed);
    tracing::info!(worker = %addr, %worker_id, "linked to dispatch worker");
    let mut decoder = FrameDecoder::new(MAX_LINK_FRAME);
    let result = loop {
        if stop.load(Relaxed) {
            break Ok(());
        }
        let frame = match decoder.decode_as::<link::LinkFrame>(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => {
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
                let read = tokio::select! {
                    r = rd.read_buf(&mut buf) => r,
                    _ = &mut writer => {
                        Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "link writer stopped"))
                    }
                };
                match read {
                    Ok(0) => break Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => continue,
                    Err(e) => break Err(e),
                }
            }
            Err(e) => {
                break Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()));
            }
        };
        match frame.body {
            Some(LinkBody::Response(resp)) => {
                let pending = link.pending().answered(frame.id);
                match (pending, resp.envelope) {
                    (Some(p), Some(env)) => (p.reply)(env),
                    (Some(p), None) => inner.retry(frame.id, p, addr),
                    (None, _) => {}
                }
            }
            Some(LinkBody::Push(push)) => {
                inner.metrics.pushes.fetch_add(1, Relaxed);
                let targets = push.targets.iter().map(|t| {
                    (t.user_id.as_str(), (t.skip_connection != 0).then_some(t.skip_connection))
                });
                inner.registry.push_many(targets, &push.frame);
            }
            Some(LinkBody::KickConnection(k)) => {
                let reason = match tern_proto::v1::KickReason::try_from(k.reason) {
                    Ok(tern_proto::v1::KickReason::Unspecified) | Err(_) => {
                        tern_proto::v1::KickReason::DuplicateLogin
                    }
                    Ok(r) => r,
                };
                inner.registry.kick_with(&k.user_id, &k.device_id, k.connection_id, reason);
            }
            Some(LinkBody::Ping(_)) => {
                let pong = tern_proto::encode_to_bytes(
                    &link::LinkFrame { id: frame.id, body: Some(LinkBody::Pong(link::Pong {})) },
                    usize::MAX,
                )
                .unwrap_or_default();
                let _ = link.tx.try_send(pong);
            }
            Some(LinkBody::Pong(_)) => {}
            other => {
                break Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected link frame {other:?}"),
                ));
            }
        }
    };
    // Down: stop routing to it, and fail what it still owes so those requests retry elsewhere.
    {
        let mut live = inner.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(addr).is_some_and(|l| Arc::ptr_eq(l, &link)) {
            live.remove(addr);
        }
    }
    expiry.abort();
    let owed: Vec<(u64, Pending)> = {
        let mut set = link.pending();
        set.closed = true;
        set.deadlines.clear();
        set.by_id.drain().collect()
    };
    // In link id order: a connection's requests keep their order on the next link.
    let mut owed = owed;
    owed.sort_unstable_by_key(|(id, _)| *id);
    for (id, p) in owed {
        inner.retry(id, p, addr);
    }
    writer.abort();
    Ok(result?)
}

/// Answers UNAVAILABLE every request of `link` still unanswered `request_timeout` after it was
/// sent. Sleeps until the oldest deadline (or one timeout when none waits), so it wakes about
/// once per timeout whatever the load.
async fn expire(inner: Arc<Inner>, link: Arc<WorkerLink>) {
    loop {
        let now = Instant::now();
        let (expired, next) = {
            let mut set = link.pending();
            let mut expired = Vec::new();
            while let Some(&(deadline, id)) = set.deadlines.front() {
                if deadline > now {
                    break;
                }
                set.deadlines.pop_front();
                if let Some(p) = set.by_id.remove(&id) {
                    expired.push(p);
                }
            }
            (expired, set.deadlines.front().map(|&(d, _)| d))
        };
        for p in expired {
            inner.unavailable(p);
        }
        // A request queued during the sleep has a later deadline than its end.
        let next = next.unwrap_or(now + inner.cfg.request_timeout);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Most queue items written with one write.
const WRITE_BATCH: usize = 1024;

/// Writes what is queued for one worker link, as few writes as it can: after the first
/// request wakes it, it lets every task already runnable go first (`yield_now`: each
/// connection's request is queued by a task of its own, and each wake of this one would
/// otherwise be a write of its own), then writes everything queued by then at once.
async fn write_link(mut rx: mpsc::Receiver<Bytes>, mut wr: tokio::net::tcp::OwnedWriteHalf) {
    let mut batch = Vec::new();
    let mut out = Vec::new();
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        tokio::task::yield_now().await;
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        out.clear();
        for f in batch.drain(..) {
            out.extend_from_slice(&f);
        }
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

impl LinkMetrics {
    /// Appends the link counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &AtomicU64); 7] = [
            (
                "tern_gateway_link_auth_failures_total",
                "Worker links refused in the handshake (bad proof or address, timeout).",
                &self.auth_failures,
            ),
            (
                "tern_gateway_sync_hints_total",
                "SyncHints sent after presence was restored.",
                &self.sync_hints,
            ),
            (
                "tern_gateway_link_retries_total",
                "Requests resent on another worker after their link failed.",
                &self.retries,
            ),
            (
                "tern_gateway_link_unavailable_total",
                "Requests answered UNAVAILABLE: no worker could take them.",
                &self.unavailable,
            ),
            ("tern_gateway_link_pushes_total", "Push frames received from workers.", &self.pushes),
            (
                "tern_gateway_links_up_total",
                "Worker links established, reconnects included.",
                &self.links_up,
            ),
            (
                "tern_gateway_presence_errors_total",
                "Presence writes that failed (retried at the next refresh).",
                &self.presence_errors,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}
