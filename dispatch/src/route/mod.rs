//! Routing deliveries in the distributed mode: look the recipients up in Redis presence (one
//! pipelined round trip per round) and send each gateway one Push per message with the users it
//! holds ([`plan`]), all of a round's Pushes for one gateway handed to its link as ONE buffer
//! (one queue item, so one link write, whatever the number of messages). A message to many (a
//! group's members) is one job: the gateway gets the frame once with its local recipients and
//! writes it to each of their connections. Pushing never blocks dispatch: jobs wait in a bounded
//! queue, and what cannot be routed (queue full, presence down, gateway not linked) is dropped
//! and counted; clients recover by sync.
//!
//! Lookups go through a presence cache kept exact by presence's change feed ([`cache`]): in
//! steady traffic a round costs one small read (the feed's mark) instead of one read per
//! recipient.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tern_presence::{Location, Mark, Presence};
use tokio::sync::{mpsc, watch};

use crate::link::Links;
use crate::push::{ConnRef, Pusher};

/// The hasher of the per-round maps (keyed by user ids: seeded per process).
type Fast = foldhash::fast::RandomState;

pub mod cache;
mod plan;
pub use cache::PresenceCache;
pub use plan::{Job, Users, plan};

/// Pushes waiting for routing; past it pushes are dropped.
const ROUTE_QUEUE: usize = 65_536;
/// Most jobs routed per round.
const ROUTE_BATCH: usize = 1024;
/// A round takes no further job once it has this many recipients (a group message may bring
/// more on its own).
const ROUND_USERS: usize = 16_384;
/// How long a round waits for the cache to apply the change feed up to the round's mark
/// before it looks everyone up instead.
const COVER_PATIENCE: Duration = Duration::from_millis(50);
/// How soon a lost change-feed subscription is retried.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How long pushes wait for presence Redis to come back before they are dropped.
const LOOKUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Router counters.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Pushes dropped because the routing queue was full.
    pub queue_full: AtomicU64,
    /// Presence lookups that failed (their pushes were dropped).
    pub lookup_errors: AtomicU64,
    /// Push frames sent to gateways.
    pub pushes_sent: AtomicU64,
    /// Recipients listed in the Push frames sent (deliveries handed to gateways).
    pub targets_sent: AtomicU64,
    /// Buffers handed to gateway links: one per (routing round, gateway).
    pub link_batches: AtomicU64,
    /// Recipients found in the presence cache.
    pub cache_hits: AtomicU64,
    /// Recipients looked up in presence Redis.
    pub lookups: AtomicU64,
    /// Rounds that could not use the cache (feed not caught up, mark unreadable, disabled).
    pub uncached_rounds: AtomicU64,
    /// Users in the presence cache.
    pub cached_users: AtomicU64,
}

impl RouteMetrics {
    /// Appends the router counters in Prometheus text format; `links_dropped` is the links'
    /// count of pushes they could not take.
    pub fn render(&self, links_dropped: u64, out: &mut String) {
        use std::fmt::Write;
        let rows = [
            (
                "tern_dispatch_route_queue_full_total",
                "Pushes dropped: routing queue full.",
                self.queue_full.load(Relaxed),
            ),
            (
                "tern_dispatch_route_lookup_errors_total",
                "Presence lookups that failed (their pushes dropped).",
                self.lookup_errors.load(Relaxed),
            ),
            (
                "tern_dispatch_route_pushes_sent_total",
                "Push frames sent to gateways.",
                self.pushes_sent.load(Relaxed),
            ),
            (
                "tern_dispatch_route_targets_sent_total",
                "Recipients listed in the Push frames sent to gateways.",
                self.targets_sent.load(Relaxed),
            ),
            (
                "tern_dispatch_route_link_batches_total",
                "Push batches handed to gateway links (one per routing round and gateway).",
                self.link_batches.load(Relaxed),
            ),
            (
                "tern_dispatch_route_cache_hits_total",
                "Recipients found in the presence cache.",
                self.cache_hits.load(Relaxed),
            ),
            (
                "tern_dispatch_route_lookups_total",
                "Recipients looked up in presence Redis.",
                self.lookups.load(Relaxed),
            ),
            (
                "tern_dispatch_route_uncached_rounds_total",
                "Routing rounds that looked every recipient up (cache behind the change feed, or off).",
                self.uncached_rounds.load(Relaxed),
            ),
            (
                "tern_dispatch_route_pushes_unlinked_total",
                "Push frames dropped: gateway not linked or its link full.",
                links_dropped,
            ),
        ];
        let cached = self.cached_users.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP tern_dispatch_route_cached_users Users in the router's presence cache.
# TYPE tern_dispatch_route_cached_users gauge
tern_dispatch_route_cached_users {cached}"
        );
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}
# TYPE {name} counter
{name} {v}"
            );
        }
    }
}

/// The distributed-mode [`Pusher`].
pub struct Router {
    tx: mpsc::Sender<Job>,
    /// Counters.
    pub metrics: Arc<RouteMetrics>,
}

impl Router {
    /// Starts the routing task (and the change-feed follower of its presence cache of at most
    /// `cache_users` users; 0: no cache, every recipient looked up) on the current runtime.
    pub fn start(presence: Presence, links: Arc<Links>, cache_users: usize) -> Self {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let metrics = Arc::new(RouteMetrics::default());
        let cache = (cache_users > 0).then(|| {
            let cache = Arc::new(Mutex::new(PresenceCache::new(cache_users)));
            let (applied_tx, applied_rx) = watch::channel(0u64);
            tokio::spawn(follow(presence.clone(), cache.clone(), applied_tx));
            Cached { cache, applied: applied_rx }
        });
        tokio::spawn(run(rx, presence, links, cache, metrics.clone()));
        Self { tx, metrics }
    }

    fn queue(&self, job: Job) {
        if self.tx.try_send(job).is_err() {
            self.metrics.queue_full.fetch_add(1, Relaxed);
        }
    }
}

/// The router's side of its presence cache.
struct Cached {
    cache: Arc<Mutex<PresenceCache>>,
    /// Bumped by the follower after every change it applied.
    applied: watch::Receiver<u64>,
}

fn lock(cache: &Mutex<PresenceCache>) -> std::sync::MutexGuard<'_, PresenceCache> {
    // Every critical section leaves the cache consistent.
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies the presence change feed to the cache, resubscribing (and starting the cache over)
/// whenever the subscription is lost. Ends with the router.
async fn follow(presence: Presence, cache: Arc<Mutex<PresenceCache>>, applied: watch::Sender<u64>) {
    while !applied.is_closed() {
        let subscribed = match presence.subscribe_changes().await {
            Ok(feed) => presence.change_mark().await.map(|mark| (feed, mark)),
            Err(e) => Err(e),
        };
        match subscribed {
            Ok((mut feed, mark)) => {
                lock(&cache).baseline(mark);
                applied.send_modify(|n| *n += 1);
                loop {
                    tokio::select! {
                        change = feed.next() => match change {
                            Some(change) => {
                                lock(&cache).apply(change);
                                applied.send_modify(|n| *n += 1);
                            }
                            None => break,
                        },
                        _ = applied.closed() => return,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence change feed: subscribing failed"),
        }
        lock(&cache).reset();
        applied.send_modify(|n| *n += 1);
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE) => {}
            _ = applied.closed() => return,
        }
    }
}

impl Cached {
    /// Waits (briefly) until the cache applied the feed up to `mark`; false if it did not.
    async fn covered(&mut self, mark: &Mark) -> bool {
        let deadline = tokio::time::Instant::now() + COVER_PATIENCE;
        loop {
            self.applied.borrow_and_update();
            if lock(&self.cache).covers(mark) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.applied.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }
}

impl Pusher for Router {
    fn push(&self, user_id: &str, frame: &Bytes, skip: Option<&ConnRef>) {
        self.queue(Job {
            users: Users::One(user_id.to_owned()),
            frame: frame.clone(),
            skip: skip.cloned(),
        });
    }

    fn push_many(&self, users: Arc<[String]>, frame: &Bytes, skip: Option<&ConnRef>) {
        self.queue(Job { users: Users::Many(users), frame: frame.clone(), skip: skip.cloned() });
    }
}

/// Takes the next round of jobs: waits for one, then takes what is queued up to
/// [`ROUTE_BATCH`] jobs or [`ROUND_USERS`] recipients. False when every sender is gone.
async fn next_round(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) -> bool {
    let Some(first) = rx.recv().await else { return false };
    let mut users = first.users.count();
    jobs.push(first);
    while jobs.len() < ROUTE_BATCH && users < ROUND_USERS {
        match rx.try_recv() {
            Ok(job) => {
                users += job.users.count();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    true
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    presence: Presence,
    links: Arc<Links>,
    mut cached: Option<Cached>,
    m: Arc<RouteMetrics>,
) {
    let mut jobs = Vec::with_capacity(ROUTE_BATCH);
    while next_round(&mut rx, &mut jobs).await {
        // One job's users are distinct already (a group's members); several jobs' may repeat.
        let mut seen: HashSet<&str, Fast> = HashSet::default();
        let users: Vec<&str> = match jobs.as_slice() {
            [one] => one.users.iter().collect(),
            _ => jobs.iter().flat_map(|j| j.users.iter()).filter(|u| seen.insert(u)).collect(),
        };
        // The cache answers only once it has applied every presence change made before this
        // round (after its messages were committed).
        let mut cache = None;
        if let Some(c) = cached.as_mut()
            && let Ok(mark) = presence.change_mark().await
            && c.covered(&mark).await
        {
            cache = Some(&*c);
        }
        let mut where_is: HashMap<&str, Arc<[Location]>, Fast> = HashMap::default();
        let (misses, since) = match cache {
            Some(c) => {
                let c = lock(&c.cache);
                // Steady traffic has everyone cached: plan from the cache itself, under the
                // same lock, with no per-recipient copy; one miss and the plan is dropped.
                let missed = std::cell::Cell::new(false);
                let batches = plan(&jobs, |u| {
                    let l = c.get_ref(u);
                    missed.set(missed.get() | l.is_none());
                    l
                });
                if !missed.get() {
                    m.cache_hits.fetch_add(users.len() as u64, Relaxed);
                    drop(c);
                    send(&links, batches, &m);
                    drop(seen);
                    jobs.clear();
                    continue;
                }
                drop(batches);
                let misses: Vec<&str> =
                    users.iter().copied().filter(|u| c.get_ref(u).is_none()).collect();
                where_is.reserve(users.len());
                for u in users {
                    if let Some(l) = c.get(u) {
                        where_is.insert(u, l);
                    }
                }
                (misses, c.position())
            }
            None => {
                m.uncached_rounds.fetch_add(1, Relaxed);
                (users, 0)
            }
        };
        m.cache_hits.fetch_add(where_is.len() as u64, Relaxed);
        m.lookups.fetch_add(misses.len() as u64, Relaxed);
        if !misses.is_empty() {
            let Some(located) = lookup(&presence, &misses, &m, jobs.len()).await else {
                jobs.clear();
                continue;
            };
            let located: Vec<Arc<[Location]>> = located.into_iter().map(Arc::from).collect();
            if let Some(c) = cache {
                let mut c = lock(&c.cache);
                c.insert(since, misses.iter().copied().zip(located.iter()));
                m.cached_users.store(c.len() as u64, Relaxed);
            }
            where_is.extend(misses.into_iter().zip(located));
        }
        send(&links, plan(&jobs, |u| where_is.get(u).map(|l| &**l)), &m);
        drop((where_is, seen));
        jobs.clear();
    }
}

/// Hands each gateway its batch of the round.
fn send(links: &Links, batches: Vec<plan::GatewayBatch>, m: &RouteMetrics) {
    for batch in batches {
        if links.try_send_frames(&batch.gateway_id, batch.frames.freeze(), batch.count) {
            m.pushes_sent.fetch_add(batch.count as u64, Relaxed);
            m.targets_sent.fetch_add(batch.targets as u64, Relaxed);
            m.link_batches.fetch_add(1, Relaxed);
        }
    }
}

/// Looks `users` up; while presence is down (a restart), retries for a while instead of
/// dropping at once (pushes queue meanwhile, bounded). `None`: gave up, the round is dropped.
async fn lookup(
    presence: &Presence,
    users: &[&str],
    m: &RouteMetrics,
    jobs: usize,
) -> Option<Vec<Vec<Location>>> {
    let give_up = tokio::time::Instant::now() + LOOKUP_PATIENCE;
    loop {
        match presence.locate(users).await {
            Ok(l) => return Some(l),
            Err(e) => {
                m.lookup_errors.fetch_add(1, Relaxed);
                if tokio::time::Instant::now() >= give_up {
                    tracing::warn!(error = %e, dropped = jobs, "presence unavailable; pushes dropped");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
