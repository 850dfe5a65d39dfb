//! What `/healthz` and `/readyz` answer: [`Health`] holds the process's lifecycle phase
//! (starting, ready, draining) and its dependency checks (store write round-trip, presence
//! Redis, worker links), run on demand with a time bound each.
//!
//! - `/healthz`: 200 `ok` when every check passes, else 503 with one `<check>: <reason>` line
//!   per failing check. The phase does not matter: a draining process is not broken.
//! - `/readyz`: 200 `ready` when the process is ready (listeners up, store open, shutdown not
//!   begun) and every check passes; else 503 with `starting`, `draining` or the failing checks.
//!   This is what a load balancer should poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Results younger than this are answered again instead of probing again, so a burst of
/// health requests costs one probe of each dependency.
const REUSE_FOR: Duration = Duration::from_millis(500);

/// A check's future: `Err` carries the reason shown in the response.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Box<dyn Fn() -> CheckFuture + Send + Sync>;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not serving yet (listeners or store not up).
    Starting,
    /// Serving.
    Ready,
    /// Shutdown began: still serving the connections it has, about to close them.
    Draining,
}

/// One HTTP answer: whether it is a 200, and the plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// 200 when true, 503 otherwise.
    pub ok: bool,
    /// The body, newline-terminated.
    pub body: String,
}

/// The lifecycle phase and the checks of one process. Share it in an `Arc`.
pub struct Health {
    phase: AtomicU8,
    checks: Vec<(&'static str, Check)>,
    check_timeout: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("phase", &self.phase())
            .field("checks", &self.checks.iter().map(|(n, _)| *n).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Starting, with no checks.
    pub fn new() -> Self {
        Self {
            phase: AtomicU8::new(0),
            checks: Vec::new(),
            check_timeout: CHECK_TIMEOUT,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Adds a check named `name` (the prefix of its line in a failing answer).
    pub fn with_check<F>(
        mut self,
        name: &'static str,
        check: impl Fn() -> F + Send + Sync + 'static,
    ) -> Self
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Box::new(move || Box::pin(check()))));
        self
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase` (never back from draining).
    pub fn set_phase(&self, phase: Phase) {
        let v = match phase {
            Phase::Starting => 0,
            Phase::Ready => 1,
            Phase::Draining => 2,
        };
        self.phase.fetch_max(v, Ordering::AcqRel);
    }

    /// Wraps a server's shutdown future: the server polls it for the first time once its
    /// listeners are served, which makes the process ready; when `shutdown` resolves the
    /// process is draining, and the wrapper resolves `drain_delay` later (connections are
    /// still served meanwhile, `/readyz` answers 503 so that load balancers move away).
    pub fn lifecycle<F: Future<Output = ()>>(
        self: &Arc<Self>,
        shutdown: F,
        drain_delay: Duration,
    ) -> impl Future<Output = ()> + use<F> {
        let health = self.clone();
        async move {
            health.set_phase(Phase::Ready);
            shutdown.await;
            health.set_phase(Phase::Draining);
            tracing::info!(?drain_delay, "shutting down: /readyz now answers 503 draining");
            tokio::time::sleep(drain_delay).await;
        }
    }

    /// One line per failing check (empty: all pass). Checks run concurrently, each bounded by
    /// [`CHECK_TIMEOUT`]; a result younger than half a second is reused.
    pub async fn failures(&self) -> Vec<String> {
        let mut last = self.last.lock().await;
        if let Some((at, failures)) = last.as_ref()
            && at.elapsed() < REUSE_FOR
        {
            return failures.clone();
        }
        let runs = self.checks.iter().map(|&(name, ref check)| {
            let (fut, limit) = (check(), self.check_timeout);
            async move {
                match tokio::time::timeout(limit, fut).await {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(format!("{name}: {}", one_line(&reason))),
                    Err(_) => Some(format!("{name}: no answer within {limit:?}")),
                }
            }
        });
        let handles: Vec<_> = runs.map(tokio::spawn).collect();
        let mut failures = Vec::new();
        for (h, (name, _)) in handles.into_iter().zip(&self.checks) {
            match h.await {
                Ok(Some(line)) => failures.push(line),
                Ok(None) => {}
                Err(e) => failures.push(format!("{name}: check failed: {e}")),
            }
        }
        *last = Some((Instant::now(), failures.clone()));
        failures
    }

    /// The `/healthz` answer.
    pub async fn healthz(&self) -> Verdict {
        verdict(self.failures().await, "ok")
    }

    /// The `/readyz` answer.
    pub async fn readyz(&self) -> Verdict {
        match self.phase() {
            Phase::Starting => Verdict { ok: false, body: "starting\n".into() },
            Phase::Draining => Verdict { ok: false, body: "draining\n".into() },
            Phase::Ready => verdict(self.failures().await, "ready"),
        }
    }
}

fn verdict(failures: Vec<String>, good: &str) -> Verdict {
    if failures.is_empty() {
        Verdict { ok: true, body: format!("{good}\n") }
    } else {
        Verdict { ok: false, body: failures.iter().map(|l| format!("{l}\n")).collect() }
    }
}

/// A reason on one line (an error's text may hold newlines).
fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A check of a [`tern_store::Store`]'s write round-trip.
pub fn store_check(
    store: Arc<dyn tern_store::Store>,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    move || {
        let store = store.clone();
        Box::pin(async move { store.health().await.map_err(|e| e.to_string()) })
    }
}

/// A check of presence Redis (a write of this node's probe key).
pub fn presence_check(
    presence: tern_presence::Presence,
    node_id: String,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    move || {
        let (p, id) = (presence.clone(), node_id.clone());
        Box::pin(async move { p.probe(&id).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn answers_follow_phase_and_checks() {
        let broken = Arc::new(AtomicBool::new(false));
        let b = broken.clone();
        let health =
            Arc::new(Health::new().with_check("store", move || {
                let b = b.clone();
                async move {
                    if b.load(Ordering::Relaxed) { Err("disk\nfull".to_owned()) } else { Ok(()) }
                }
            }));
        assert_eq!(health.readyz().await, Verdict { ok: false, body: "starting\n".into() });
        assert_eq!(health.healthz().await, Verdict { ok: true, body: "ok\n".into() });
        health.set_phase(Phase::Ready);
        assert_eq!(health.readyz().await, Verdict { ok: true, body: "ready\n".into() });

        broken.store(true, Ordering::Relaxed);
        *health.last.lock().await = None;
        let sick = Verdict { ok: false, body: "store: disk full\n".into() };
        assert_eq!(health.healthz().await, sick);
        assert_eq!(health.readyz().await, sick);

        health.set_phase(Phase::Draining);
        health.set_phase(Phase::Ready);
        assert_eq!(health.phase(), Phase::Draining, "never back from draining");
        assert_eq!(health.readyz().await, Verdict { ok: false, body: "draining\n".into() });
    }

    #[tokio::test]
    async fn a_hanging_check_fails_in_bounded_time() {
        let mut health = Health::new()
            .with_check("presence", std::future::pending::<Result<(), String>>)
            .with_check("store", || async { Ok(()) });
        health.check_timeout = Duration::from_millis(1);
        let v = health.healthz().await;
        assert!(!v.ok);
        assert_eq!(v.body, "presence: no answer within 1ms\n");
    }

    #[tokio::test]
    async fn lifecycle_is_ready_at_first_poll_and_drains_after_shutdown() {
        let health = Arc::new(Health::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let life = health.lifecycle(
            async move {
                let _ = rx.await;
            },
            Duration::ZERO,
        );
        assert_eq!(health.phase(), Phase::Starting, "not before the server polls it");
        let task = tokio::spawn(life);
        tokio::task::yield_now().await;
        while health.phase() == Phase::Starting {
            tokio::task::yield_now().await;
        }
        assert_eq!(health.phase(), Phase::Ready);
        tx.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(health.phase(), Phase::Draining);
    }
}
