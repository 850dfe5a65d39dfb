//! Offline push: after a message commits, its recipients' devices that have a push
//! registration and are not connected get a notification through the notifier
//! (`tern-notify`: APNs, FCM v1, webhook); connected ones get one only if their user has not
//! acknowledged the message within the ack timeout ([`watch`]). Mute and mention facts travel
//! with each notification; the notifier applies the rule and coalesces bursts.
//!
//! Nothing here blocks or slows the message path: the commit thread hands each message to
//! [`Alerts::committed`], a `try_send` into a bounded queue (full: dropped and counted: the
//! device still syncs, it only misses the buzz); one task does the rest (registration lookups,
//! presence, mutes, the watch), and the notifier's own queues keep a slow push service away
//! from everything else.
//!
//! - [`plan`]: who is notified now, who is watched (pure).
//! - [`watch`]: the ack-timeout trigger (pure, virtual clock).
//! - [`ttl`]: the short caches of push registrations and of who is connected (pure).
//! - [`OfflinePush`]: starts the notifier and the task, renders metrics, shuts both down.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tern_notify::{InvalidToken, Notification, Notifier, NotifyConfig, NotifyHandle, Provider};
use tern_store::{DeviceWrite, Store, StoreError};
use tokio::sync::{mpsc, watch as signal};
use tokio::task::JoinHandle;

use crate::devices::Sessions;
use crate::dispatcher::Dispatcher;

pub mod plan;
pub mod ttl;
pub mod watch;

pub use plan::{Alert, Registered};

use ttl::TtlCache;
use watch::{AckWatch, Settled};

/// Messages waiting for the offline-push task; past it they are dropped (counted).
const QUEUE: usize = 65_536;
/// Most messages the task takes per wake-up.
const BATCH: usize = 64;
/// How long the task trusts a presence answer. Staleness is harmless either way: a device
/// that went offline meanwhile is watched and notified when it does not acknowledge; one that
/// came online gets one push too many. Without it a large group whose members all have a
/// registration would cost a presence read per member per message.
const PRESENCE_TTL: Duration = Duration::from_secs(2);

/// When dispatch notifies, besides the notifier's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Triggers {
    /// A connected device is notified if its user has not acknowledged (delivered watermark) a
    /// message this long after it; zero: connected devices are never notified.
    pub ack_timeout: Duration,
    /// Most (conversation, user, device) entries watched at once.
    pub max_watched: usize,
    /// How long a user's push registrations are cached.
    pub registration_ttl: Duration,
    /// Most users whose registrations are cached.
    pub registration_cache_users: usize,
    /// Previews are on: messages carry their text to the notifier.
    pub include_preview: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(10),
            max_watched: 100_000,
            registration_ttl: Duration::from_secs(10),
            registration_cache_users: 100_000,
            include_preview: false,
        }
    }
}

/// Offline-push counters (`tern_dispatch_push_*`).
#[derive(Debug, Default)]
pub struct AlertMetrics {
    /// Committed messages handed to the task.
    pub messages: AtomicU64,
    /// Messages dropped: the task's queue was full.
    pub queue_full: AtomicU64,
    /// Notifications handed to the notifier for devices not connected.
    pub offline: AtomicU64,
    /// Notifications handed to the notifier after an unacknowledged watch.
    pub unacknowledged: AtomicU64,
    /// Watches that ended acknowledged (no notification).
    pub acknowledged: AtomicU64,
    /// Watches refused: the watch table was full.
    pub watch_full: AtomicU64,
    /// Store or presence reads that failed.
    pub errors: AtomicU64,
    /// Registrations removed because the provider refused their token.
    pub unregistered: AtomicU64,
}

impl AlertMetrics {
    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64); 8] = [
            (
                "tern_dispatch_push_messages_total",
                "Committed messages checked for offline push.",
                &self.messages,
            ),
            (
                "tern_dispatch_push_queue_full_total",
                "Messages not checked for push: queue full.",
                &self.queue_full,
            ),
            (
                "tern_dispatch_push_offline_total",
                "Notifications for devices not connected.",
                &self.offline,
            ),
            (
                "tern_dispatch_push_unacknowledged_total",
                "Notifications for connected devices that did not acknowledge in time.",
                &self.unacknowledged,
            ),
            (
                "tern_dispatch_push_acknowledged_total",
                "Watched connected devices that acknowledged in time.",
                &self.acknowledged,
            ),
            (
                "tern_dispatch_push_watch_full_total",
                "Connected devices not watched: watch table full.",
                &self.watch_full,
            ),
            (
                "tern_dispatch_push_errors_total",
                "Store or presence reads for push that failed.",
                &self.errors,
            ),
            (
                "tern_dispatch_push_unregistered_total",
                "Push registrations removed: token refused by the provider.",
                &self.unregistered,
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

/// One committed message and who may be notified of it (its conversation's members).
struct Job {
    alert: Alert,
    recipients: Arc<[String]>,
}

/// What the rest of dispatch tells the task besides messages.
enum Control {
    /// A user's registrations changed on this worker.
    Changed(String),
    /// A provider refused a token.
    Invalid(InvalidToken),
}

struct Live {
    jobs: mpsc::Sender<Job>,
    control: mpsc::UnboundedSender<Control>,
    handle: NotifyHandle,
    include_preview: bool,
}

/// Dispatch's way into offline push. Created with the dispatcher, inert until
/// [`OfflinePush::start`] (no notifier configured: every call is a no-op).
#[derive(Default)]
pub struct Alerts {
    live: OnceLock<Live>,
    metrics: AlertMetrics,
}

impl Alerts {
    /// Whether offline push runs (callers skip building alerts otherwise).
    pub fn enabled(&self) -> bool {
        self.live.get().is_some()
    }

    /// Whether alerts should carry previews.
    pub fn previews(&self) -> bool {
        self.live.get().is_some_and(|l| l.include_preview)
    }

    /// The counters.
    pub fn metrics(&self) -> &AlertMetrics {
        &self.metrics
    }

    /// A message committed for `recipients` (its conversation's members). Never waits.
    pub fn committed(&self, alert: Alert, recipients: Arc<[String]>) {
        let Some(live) = self.live.get() else { return };
        self.metrics.messages.fetch_add(1, Relaxed);
        if live.jobs.try_send(Job { alert, recipients }).is_err() {
            self.metrics.queue_full.fetch_add(1, Relaxed);
        }
    }

    /// `user`'s push registration changed on this worker; `registered` is the new one, if
    /// any (a token refused before may work again).
    pub fn registration_changed(&self, user: &str, registered: Option<(Provider, &str)>) {
        let Some(live) = self.live.get() else { return };
        if let Some((provider, token)) = registered {
            live.handle.forget_invalid(provider, token);
        }
        let _ = live.control.send(Control::Changed(user.to_owned()));
    }
}

/// The running offline push: the notifier and the task that feeds it.
pub struct OfflinePush {
    alerts: Arc<Alerts>,
    notifier: Notifier,
    stop: signal::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for OfflinePush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflinePush").finish_non_exhaustive()
    }
}

impl OfflinePush {
    /// Starts the notifier with `config` and the task, and switches `d`'s alerts on. Set the
    /// dispatcher's sessions first (without them every device counts as connected: only the
    /// ack-timeout trigger notifies). Must run inside the tokio runtime.
    pub fn start(
        d: &Arc<Dispatcher>,
        config: NotifyConfig,
        triggers: Triggers,
    ) -> Result<Self, tern_notify::StartError> {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let invalid_tx = control_tx.clone();
        let notifier = Notifier::start(config, move |t| {
            let _ = invalid_tx.send(Control::Invalid(t));
        })?;
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
        let (stop, stopped) = signal::channel(false);
        let alerts = d.alerts.clone();
        let live = Live {
            jobs: jobs_tx,
            control: control_tx,
            handle: notifier.handle(),
            include_preview: triggers.include_preview,
        };
        let _ = alerts.live.set(live);
        let task = Task {
            store: d.store.clone(),
            sessions: d.sessions().cloned(),
            handle: notifier.handle(),
            alerts: alerts.clone(),
            regs: TtlCache::new(triggers.registration_ttl, triggers.registration_cache_users),
            online: TtlCache::new(PRESENCE_TTL, triggers.registration_cache_users),
            watch: AckWatch::new(triggers.ack_timeout, triggers.max_watched),
            ack_timeout: triggers.ack_timeout,
        };
        let task = tokio::spawn(task.run(jobs_rx, control_rx, stopped));
        Ok(Self { alerts, notifier, stop, task })
    }

    /// Appends the offline-push and notifier counters in Prometheus text format (usable
    /// after shutdown too).
    pub fn renderer(&self) -> impl Fn(&mut String) + Send + Sync + 'static {
        let (alerts, notifier) = (self.alerts.clone(), self.notifier.metrics().clone());
        move |out: &mut String| {
            alerts.metrics.render(out);
            notifier.render(out);
        }
    }

    /// Stops the task (watched devices are dropped: they sync when they read), then lets the
    /// notifier send what it holds within its grace period.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the offline push task failed");
        }
        self.notifier.shutdown().await;
    }
}

/// The task's state.
struct Task {
    store: Arc<dyn Store>,
    sessions: Option<Arc<dyn Sessions>>,
    handle: NotifyHandle,
    alerts: Arc<Alerts>,
    regs: TtlCache<Arc<[Registered]>>,
    online: TtlCache<Arc<[String]>>,
    watch: AckWatch,
    ack_timeout: Duration,
}

impl Task {
    async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut stopped: signal::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let deadline = self.watch.next_deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                _ = stopped.changed() => break,
                Some(c) = control.recv() => self.control(c).await,
                n = jobs.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for job in batch.drain(..) {
                        self.message(job).await;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.due().await,
            }
        }
    }

    async fn control(&mut self, c: Control) {
        match c {
            Control::Changed(user) => self.regs.invalidate(&user),
            Control::Invalid(t) => {
                self.regs.invalidate(&t.user_id);
                // Only the refused token: the device may have registered a new one since.
                let current = match self.store.device(&t.user_id, &t.device_id).await {
                    Ok(r) => r.and_then(|r| r.push).is_some_and(|p| p.token == t.token),
                    Err(e) => {
                        self.alerts.metrics.errors.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "push: reading a refused token's device failed");
                        false
                    }
                };
                if !current {
                    return;
                }
                let clear = DeviceWrite::ClearPush;
                match self.store.device_write(&t.user_id, &t.device_id, &clear).await {
                    Ok(_) => {
                        self.alerts.metrics.unregistered.fetch_add(1, Relaxed);
                        tracing::info!(user = %t.user_id, device = %t.device_id, provider = t.provider.as_str(), reason = %t.reason, "push registration removed: token refused");
                    }
                    Err(e) => {
                        self.alerts.metrics.errors.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "push: removing a refused registration failed");
                    }
                }
            }
        }
    }

    /// Plans one message's notifications: now for devices not connected, watched for the rest.
    async fn message(&mut self, job: Job) {
        let alert = &job.alert;
        let registered = self.registered(&job.recipients, &alert.sender_user_id).await;
        if registered.is_empty() {
            return;
        }
        let mut users: Vec<String> = registered.iter().map(|r| r.user_id.clone()).collect();
        users.dedup();
        let online = self.online(&users).await;
        // Mutes are read only for what is sent (most watched devices acknowledge).
        let planned = plan::plan(alert, &registered, online.as_ref(), &HashSet::new());
        let now_list = self.with_mutes(&alert.conversation_id, planned.now).await;
        for n in now_list {
            self.alerts.metrics.offline.fetch_add(1, Relaxed);
            self.handle.enqueue(n);
        }
        if self.ack_timeout.is_zero() {
            return;
        }
        let now = Instant::now();
        for n in planned.watch {
            if !self.watch.watch(now, n) {
                self.alerts.metrics.watch_full.fetch_add(1, Relaxed);
            }
        }
    }

    /// `notifications` (of one conversation) with their users' mute flags set: one store read.
    async fn with_mutes(
        &self,
        conv: &str,
        mut notifications: Vec<Notification>,
    ) -> Vec<Notification> {
        if notifications.is_empty() {
            return notifications;
        }
        let mut users: Vec<String> = notifications.iter().map(|n| n.user_id.clone()).collect();
        users.sort();
        users.dedup();
        let muted: HashSet<String> = match self.store.muted_among(conv, &users).await {
            Ok(m) => m.into_iter().collect(),
            Err(StoreError::Unsupported(_)) => HashSet::new(),
            Err(e) => {
                // Unknown mutes: treat everyone as muted, so only mentions notify.
                self.alerts.metrics.errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "push: reading mutes failed");
                users.into_iter().collect()
            }
        };
        for n in &mut notifications {
            n.muted = muted.contains(&n.user_id);
        }
        notifications
    }

    /// The registered devices of `recipients` other than `sender`, from the cache or the store.
    async fn registered(&mut self, recipients: &[String], sender: &str) -> Vec<Registered> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for u in recipients.iter().filter(|u| *u != sender) {
            match self.regs.get(now, u) {
                Some(devices) => out.extend(devices.iter().cloned()),
                None => missing.push(u.clone()),
            }
        }
        if missing.is_empty() {
            return out;
        }
        let found = match self.store.push_registrations(&missing).await {
            Ok(found) => found,
            Err(StoreError::Unsupported(_)) => Vec::new(),
            Err(e) => {
                self.alerts.metrics.errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "push: reading registrations failed");
                return out;
            }
        };
        let mut by_user: HashMap<String, Vec<Registered>> = HashMap::new();
        for (user, record) in found {
            if let Some(push) = record.push {
                let device_id = record.device_id;
                by_user.entry(user.clone()).or_default().push(Registered {
                    user_id: user,
                    device_id,
                    push,
                });
            }
        }
        for u in missing {
            let devices: Arc<[Registered]> = by_user.remove(&u).unwrap_or_default().into();
            out.extend(devices.iter().cloned());
            self.regs.insert(now, u, devices);
        }
        out
    }

    /// The connected (user, device) pairs of `users` (briefly cached), `None` when unknown.
    async fn online(&mut self, users: &[String]) -> Option<HashSet<(String, String)>> {
        let sessions = self.sessions.clone()?;
        let now = Instant::now();
        let mut pairs = HashSet::new();
        let mut missing = Vec::new();
        for u in users {
            match self.online.get(now, u) {
                Some(devices) => pairs.extend(devices.iter().map(|d| (u.clone(), d.clone()))),
                None => missing.push(u.clone()),
            }
        }
        if missing.is_empty() {
            return Some(pairs);
        }
        let Some(found) = sessions.online_many(&missing).await else {
            self.alerts.metrics.errors.fetch_add(1, Relaxed);
            return None;
        };
        for (u, devices) in missing.into_iter().zip(found) {
            pairs.extend(devices.iter().map(|d| (u.clone(), d.clone())));
            self.online.insert(now, u, devices.into());
        }
        Some(pairs)
    }

    /// Settles the watches that are due: one watermark read per conversation.
    async fn due(&mut self) {
        let now = Instant::now();
        let mut by_conv: HashMap<String, Vec<(watch::Key, watch::Watched)>> = HashMap::new();
        for (key, w) in self.watch.due(now) {
            by_conv.entry(key.0.clone()).or_default().push((key, w));
        }
        for (conv, items) in by_conv {
            let marks: Option<HashMap<String, u64>> = match self.store.watermarks(&conv).await {
                Ok(m) => Some(m.into_iter().map(|(u, w)| (u, w.delivered)).collect()),
                Err(e) => {
                    self.alerts.metrics.errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "push: reading watermarks failed");
                    None
                }
            };
            let mut notify = Vec::new();
            for (key, w) in items {
                let delivered = marks.as_ref().map(|m| m.get(&key.1).copied().unwrap_or(0));
                match self.watch.settle(now, key, w, delivered) {
                    Settled::Notify(n) => notify.push(*n),
                    Settled::Acked => {
                        self.alerts.metrics.acknowledged.fetch_add(1, Relaxed);
                    }
                    Settled::Rearmed => {}
                }
            }
            for n in self.with_mutes(&conv, notify).await {
                self.notify_unacknowledged(n);
            }
        }
    }

    fn notify_unacknowledged(&self, n: Notification) {
        self.alerts.metrics.unacknowledged.fetch_add(1, Relaxed);
        self.handle.enqueue(n);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
