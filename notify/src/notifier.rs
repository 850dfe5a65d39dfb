//! The running notifier: a bounded intake that never blocks, one driver task around the
//! [`Coalescer`], and one lane per provider (bounded queue, concurrency limit, timeouts,
//! bounded retries), so that a slow or failing provider only ever drops its own pushes.
//!
//! ```text
//! enqueue ──try_send──▶ intake (queue_capacity) ──▶ driver: rule already applied, Coalescer
//!                                                     │ try_send, full → dropped{provider_full}
//!                              ┌──────────────────────┼──────────────────────┐
//!                           APNs lane              FCM lane             webhook lane
//!                     (queue, N in flight)   (queue, N in flight)   (queue, N in flight)
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::apns::ApnsClient;
use crate::coalesce::{Coalescer, Offered};
use crate::config::{ContentConfig, NotifyConfig, ProviderLimits};
use crate::error::StartError;
use crate::fcm::FcmClient;
use crate::http::{self, Protocols};
use crate::metrics::NotifyMetrics;
use crate::notification::{Content, Notification, Provider, Push};
use crate::retry::{Outcome, RetryPolicy};
use crate::rules::{self, Decision};
use crate::webhook::WebhookClient;

/// Most notifications the driver takes from the intake per wake-up before it looks at its
/// timers again.
const DRIVER_BATCH: usize = 256;

/// A token a provider reported invalid: unregister it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToken {
    /// Whose device.
    pub user_id: String,
    /// Which device.
    pub device_id: String,
    /// Which provider said so.
    pub provider: Provider,
    /// The token.
    pub token: String,
    /// The provider's words, for logs.
    pub reason: String,
}

/// What [`NotifyHandle::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Accepted; it will be sent (or merged into a burst).
    Queued,
    /// Not sent: muted conversation, no overriding mention.
    Muted,
    /// Not sent: the member sent the message.
    OwnMessage,
    /// Dropped: the intake queue is full (counted).
    QueueFull,
    /// Dropped: the notifier is shut down (counted).
    Closed,
}

type OnInvalid = Box<dyn Fn(InvalidToken) + Send + Sync>;

struct Shared {
    content: ContentConfig,
    metrics: Arc<NotifyMetrics>,
    invalid: Mutex<InvalidMemory>,
    on_invalid: OnInvalid,
}

impl Shared {
    /// Reports `push`'s token once, however many pushes to it fail.
    fn report_invalid(&self, push: &Push, reason: String) {
        let n = &push.latest;
        let provider = n.target.provider();
        let key = (provider, n.target.token().to_owned());
        let new = self.invalid.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
        if !new {
            return;
        }
        self.metrics.provider(provider).invalid_tokens.fetch_add(1, Relaxed);
        tracing::info!(provider = provider.as_str(), user = %n.user_id, device = %n.device_id, %reason, "notify: token invalid");
        (self.on_invalid)(InvalidToken {
            user_id: n.user_id.clone(),
            device_id: n.device_id.clone(),
            provider,
            token: n.target.token().to_owned(),
            reason,
        });
    }

    fn is_invalid(&self, provider: Provider, token: &str) -> bool {
        let memory = self.invalid.lock().unwrap_or_else(|p| p.into_inner());
        memory.set.contains(&(provider, token.to_owned()))
    }
}

/// Tokens already reported invalid, oldest forgotten first.
struct InvalidMemory {
    set: HashSet<(Provider, String)>,
    order: VecDeque<(Provider, String)>,
    cap: usize,
}

impl InvalidMemory {
    fn insert(&mut self, key: (Provider, String)) -> bool {
        if self.cap == 0 || !self.set.insert(key.clone()) {
            return self.cap == 0;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn remove(&mut self, key: &(Provider, String)) {
        if self.set.remove(key) {
            self.order.retain(|k| k != key);
        }
    }
}

/// A cheap, cloneable way in: what the message path holds.
#[derive(Clone)]
pub struct NotifyHandle {
    intake: mpsc::Sender<Notification>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NotifyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyHandle").finish_non_exhaustive()
    }
}

impl NotifyHandle {
    /// Applies the mute and mention rule ([`crate::rules`]), then queues the notification.
    /// Never waits: a full queue drops it and counts it.
    pub fn enqueue(&self, n: Notification) -> Enqueued {
        let m = &self.shared.metrics;
        match rules::decide(n.facts(), self.shared.content.all_mention_overrides_mute) {
            Decision::Muted => {
                m.suppressed_muted.fetch_add(1, Relaxed);
                return Enqueued::Muted;
            }
            Decision::OwnMessage => {
                m.suppressed_own.fetch_add(1, Relaxed);
                return Enqueued::OwnMessage;
            }
            Decision::Notify => {}
        }
        match self.intake.try_send(n) {
            Ok(()) => {
                m.enqueued.fetch_add(1, Relaxed);
                Enqueued::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                m.dropped_queue_full.fetch_add(1, Relaxed);
                Enqueued::QueueFull
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                m.dropped_closed.fetch_add(1, Relaxed);
                Enqueued::Closed
            }
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<NotifyMetrics> {
        &self.shared.metrics
    }

    /// Forgets that `token` was invalid (the device registered it again), so pushes to it are
    /// sent again and a new failure is reported again.
    pub fn forget_invalid(&self, provider: Provider, token: &str) {
        let mut memory = self.shared.invalid.lock().unwrap_or_else(|p| p.into_inner());
        memory.remove(&(provider, token.to_owned()));
    }
}

/// The notifier: start it inside a tokio runtime, hand out [`NotifyHandle`]s, and
/// [`shutdown`](Notifier::shutdown) it at the end.
pub struct Notifier {
    handle: NotifyHandle,
    stop: watch::Sender<bool>,
    driver: JoinHandle<()>,
    lanes: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("lanes", &self.lanes.len()).finish_non_exhaustive()
    }
}

/// One provider's sender.
enum ProviderClient {
    Apns(Box<ApnsClient>),
    Fcm(FcmClient),
    Webhook(WebhookClient),
}

impl ProviderClient {
    async fn send(&self, push: &Push, content: &Content) -> Outcome {
        match self {
            ProviderClient::Apns(c) => c.send(push, content).await,
            ProviderClient::Fcm(c) => c.send(push, content).await,
            ProviderClient::Webhook(c) => c.send(push, content).await,
        }
    }
}

impl Notifier {
    /// Reads the configured keys, builds one client per configured provider and starts the
    /// tasks. `on_invalid` is called once per token a provider reports invalid, on a notifier
    /// task: it must not block (hand the token to the store through a channel).
    pub fn start(
        config: NotifyConfig,
        on_invalid: impl Fn(InvalidToken) + Send + Sync + 'static,
    ) -> Result<Notifier, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        if config.queue_capacity == 0 {
            return Err(StartError::Config("queue_capacity must be at least 1".into()));
        }
        let ca_file = (!config.ca_file.as_os_str().is_empty()).then_some(config.ca_file.as_path());
        let roots = http::roots(ca_file)?;
        let ttl = config.ttl;
        let mut providers: Vec<(Provider, ProviderClient, ProviderLimits)> = Vec::new();
        if let Some(c) = &config.apns {
            check_limits("apns", &c.limits)?;
            let client = http::client(&roots, Protocols::Http2Tls, &c.limits)?;
            providers.push((
                Provider::Apns,
                ProviderClient::Apns(Box::new(ApnsClient::new(c, client, ttl)?)),
                c.limits.clone(),
            ));
        }
        if let Some(c) = &config.fcm {
            check_limits("fcm", &c.limits)?;
            let client = http::client(&roots, Protocols::Http2Tls, &c.limits)?;
            providers.push((
                Provider::Fcm,
                ProviderClient::Fcm(FcmClient::new(c, client, ttl.as_secs())?),
                c.limits.clone(),
            ));
        }
        if let Some(c) = &config.webhook {
            check_limits("webhook", &c.limits)?;
            let uri: ::http::Uri = c
                .url
                .parse()
                .map_err(|e| StartError::Config(format!("webhook url {:?}: {e}", c.url)))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(StartError::Config(format!(
                    "webhook url {:?}: an http:// or https:// URL",
                    c.url
                )));
            }
            let secret = webhook_secret(c)?;
            let client = http::client(&roots, Protocols::Any, &c.limits)?;
            providers.push((
                Provider::Webhook,
                ProviderClient::Webhook(WebhookClient::new(client, c.url.clone(), secret)),
                c.limits.clone(),
            ));
        }

        let shared = Arc::new(Shared {
            content: config.content.clone(),
            metrics: Arc::new(NotifyMetrics::default()),
            invalid: Mutex::new(InvalidMemory {
                set: HashSet::new(),
                order: VecDeque::new(),
                cap: config.invalid_token_memory,
            }),
            on_invalid: Box::new(on_invalid),
        });
        let mut senders: [Option<mpsc::Sender<Push>>; 3] = [None, None, None];
        let mut lanes = Vec::new();
        for (provider, client, limits) in providers {
            let (tx, rx) = mpsc::channel(limits.queue_capacity);
            senders[provider.index()] = Some(tx);
            lanes.push(runtime.spawn(lane(provider, Arc::new(client), rx, limits, shared.clone())));
        }
        let (intake, intake_rx) = mpsc::channel(config.queue_capacity);
        let (stop, stopped) = watch::channel(false);
        let coalescer = Coalescer::new(config.coalesce_window, config.max_coalesce_keys);
        let driver = runtime.spawn(drive(intake_rx, stopped, coalescer, senders, shared.clone()));
        Ok(Notifier {
            handle: NotifyHandle { intake, shared },
            stop,
            driver,
            lanes,
            grace: config.shutdown_grace,
        })
    }

    /// A handle for the message path.
    pub fn handle(&self) -> NotifyHandle {
        self.handle.clone()
    }

    /// [`NotifyHandle::enqueue`] on this notifier's handle.
    pub fn enqueue(&self, n: Notification) -> Enqueued {
        self.handle.enqueue(n)
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<NotifyMetrics> {
        self.handle.metrics()
    }

    /// Stops taking notifications, sends the bursts still waiting in the coalescer, lets the
    /// lanes finish what they hold for up to `shutdown_grace`, then abandons the rest (their
    /// HTTP requests are dropped). Returns when every task has ended. Handles still held by
    /// others answer [`Enqueued::Closed`] from then on.
    pub async fn shutdown(self) {
        let Notifier { handle, stop, driver, lanes, grace } = self;
        drop(handle);
        let _ = stop.send(true);
        let deadline = Instant::now() + grace;
        let mut tasks = Vec::with_capacity(lanes.len() + 1);
        tasks.push(driver);
        tasks.extend(lanes);
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

fn check_limits(provider: &str, limits: &ProviderLimits) -> Result<(), StartError> {
    if limits.concurrency == 0 || limits.queue_capacity == 0 || limits.max_attempts == 0 {
        return Err(StartError::Config(format!(
            "{provider}: concurrency, queue_capacity and max_attempts must be at least 1"
        )));
    }
    Ok(())
}

fn webhook_secret(c: &crate::config::WebhookConfig) -> Result<Vec<u8>, StartError> {
    let secret = match (&c.secret, &c.secret_file) {
        (s, _) if !s.is_empty() => s.clone(),
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| StartError::Read {
                what: "webhook secret_file",
                path: path.clone(),
                source,
            })?
            .trim_end()
            .to_owned(),
        (_, None) => String::new(),
    };
    if secret.is_empty() {
        return Err(StartError::Config("webhook: a secret (or secret_file) is required".into()));
    }
    Ok(secret.into_bytes())
}

/// The driver: intake → rule-checked notifications → coalescer → provider lanes.
async fn drive(
    mut intake: mpsc::Receiver<Notification>,
    mut stopped: watch::Receiver<bool>,
    mut coalescer: Coalescer,
    lanes: [Option<mpsc::Sender<Push>>; 3],
    shared: Arc<Shared>,
) {
    let route = |push: Push| route(&lanes, &shared, push);
    let offer = |c: &mut Coalescer, n: Notification| {
        let m = &shared.metrics;
        match c.offer(Instant::now().into_std(), n) {
            Offered::Send(p) => route(p),
            Offered::SendUntracked(p) => {
                m.coalesce_untracked.fetch_add(1, Relaxed);
                route(p)
            }
            Offered::Merged => {
                m.coalesced.fetch_add(1, Relaxed);
            }
        }
    };
    loop {
        let deadline = coalescer.next_deadline().map(Instant::from_std);
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            n = intake.recv() => match n {
                Some(n) => {
                    offer(&mut coalescer, n);
                    for _ in 1..DRIVER_BATCH {
                        let Ok(n) = intake.try_recv() else { break };
                        offer(&mut coalescer, n);
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {}
        }
        let now = Instant::now().into_std();
        while let Some(push) = coalescer.poll(now) {
            route(push);
        }
    }
    // Take what was queued before the stop, then hand out every burst still waiting.
    intake.close();
    while let Ok(n) = intake.try_recv() {
        offer(&mut coalescer, n);
    }
    for push in coalescer.flush() {
        route(push);
    }
    // Dropping the lane senders lets each lane finish its queue and end.
}

fn route(lanes: &[Option<mpsc::Sender<Push>>; 3], shared: &Shared, push: Push) {
    let provider = push.latest.target.provider();
    let m = shared.metrics.provider(provider);
    let Some(lane) = &lanes[provider.index()] else {
        m.dropped_unconfigured.fetch_add(1, Relaxed);
        return;
    };
    if shared.is_invalid(provider, push.latest.target.token()) {
        m.dropped_invalid.fetch_add(1, Relaxed);
        return;
    }
    if lane.try_send(push).is_err() {
        m.dropped_full.fetch_add(1, Relaxed);
    }
}

/// One provider's lane: at most `concurrency` deliveries in flight, each bounded in time and
/// attempts.
async fn lane(
    provider: Provider,
    client: Arc<ProviderClient>,
    mut queue: mpsc::Receiver<Push>,
    limits: ProviderLimits,
    shared: Arc<Shared>,
) {
    let slots = Arc::new(Semaphore::new(limits.concurrency));
    let policy = RetryPolicy::of(&limits);
    let mut in_flight = JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        while in_flight.try_join_next().is_some() {}
        let Some(push) = queue.recv().await else { break };
        let (client, shared) = (client.clone(), shared.clone());
        let timeout = limits.request_timeout;
        in_flight.spawn(async move {
            deliver(provider, &client, push, &shared, policy, timeout).await;
            drop(slot);
        });
    }
    while in_flight.join_next().await.is_some() {}
}

async fn deliver(
    provider: Provider,
    client: &ProviderClient,
    push: Push,
    shared: &Shared,
    policy: RetryPolicy,
    timeout: Duration,
) {
    let m = shared.metrics.provider(provider);
    let content = Content::render(&push, &shared.content);
    let mut attempt = 1;
    loop {
        let outcome = match tokio::time::timeout(timeout, client.send(&push, &content)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retryable { reason: "timed out".into(), retry_after: None },
        };
        match outcome {
            Outcome::Delivered => {
                m.sent.fetch_add(1, Relaxed);
                return;
            }
            Outcome::InvalidToken { reason } => {
                shared.report_invalid(&push, reason);
                return;
            }
            Outcome::Failed { reason } => {
                m.failed.fetch_add(1, Relaxed);
                tracing::warn!(provider = provider.as_str(), %reason, "notify: push refused");
                return;
            }
            Outcome::Retryable { reason, retry_after } => {
                match policy.delay(attempt, retry_after, fastrand::f64()) {
                    Some(wait) => {
                        m.retries.fetch_add(1, Relaxed);
                        tracing::debug!(provider = provider.as_str(), %reason, ?wait, "notify: retrying");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => {
                        m.failed.fetch_add(1, Relaxed);
                        tracing::warn!(provider = provider.as_str(), %reason, attempt, "notify: push given up");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_memory_reports_once_and_forgets_the_oldest() {
        let mut m = InvalidMemory { set: HashSet::new(), order: VecDeque::new(), cap: 2 };
        let k = |t: &str| (Provider::Fcm, t.to_owned());
        assert!(m.insert(k("a")));
        assert!(!m.insert(k("a")));
        assert!(m.insert(k("b")));
        assert!(m.insert(k("c")));
        assert!(!m.set.contains(&k("a")));
        assert!(m.insert(k("a")), "forgotten, so reported again");
        m.remove(&k("c"));
        assert_eq!(m.order.len(), 1);
        let mut none = InvalidMemory { set: HashSet::new(), order: VecDeque::new(), cap: 0 };
        assert!(none.insert(k("a")) && none.insert(k("a")), "no memory: report every time");
    }

    #[tokio::test]
    async fn enqueue_applies_the_rule_never_waits_and_counts_drops() {
        let config = NotifyConfig { queue_capacity: 2, ..Default::default() };
        let notifier = Notifier::start(config, |_| {}).expect("starts without providers");
        let h = notifier.handle();
        let mut n = crate::notification::tests::sample("g:1", 1);
        n.muted = true;
        assert_eq!(h.enqueue(n.clone()), Enqueued::Muted);
        n.mention = crate::rules::Mention::User;
        n.sender_user_id = n.user_id.clone();
        assert_eq!(h.enqueue(n), Enqueued::OwnMessage);
        let m = h.metrics().clone();
        assert_eq!((m.suppressed_muted.load(Relaxed), m.suppressed_own.load(Relaxed)), (1, 1));
        notifier.shutdown().await;
        let n = crate::notification::tests::sample("g:1", 2);
        assert_eq!(h.enqueue(n), Enqueued::Closed);
        assert_eq!(m.dropped_closed.load(Relaxed), 1);
    }

    #[test]
    fn start_needs_a_runtime_and_sane_limits() {
        assert!(matches!(
            Notifier::start(NotifyConfig::default(), |_| {}),
            Err(StartError::NoRuntime)
        ));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let bad = NotifyConfig {
            webhook: Some(crate::config::WebhookConfig {
                url: "ftp://x".into(),
                secret: "s".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(Notifier::start(bad, |_| {}), Err(StartError::Config(_))));
        let no_secret = NotifyConfig {
            webhook: Some(crate::config::WebhookConfig {
                url: "http://127.0.0.1:1/".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(Notifier::start(no_secret, |_| {}), Err(StartError::Config(_))));
        let limits = ProviderLimits { concurrency: 0, ..Default::default() };
        let zero = NotifyConfig {
            webhook: Some(crate::config::WebhookConfig {
                url: "http://127.0.0.1:1/".into(),
                secret: "s".into(),
                limits,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(Notifier::start(zero, |_| {}), Err(StartError::Config(_))));
    }
}
