//! Group commit. Sends, recalls and receipt moves wait in one queue; one commit thread
//! (`tern-commit`) takes whatever waits (up to `max_commit_batch`), commits it as one group
//! ([`Store::commit`]: one durable write), then in one pass pushes the new messages in sequence
//! order, pushes each moved receipt watermark once, and answers every request.
//!
//! Batching is adaptive: the thread never waits for company, so a message alone is committed at
//! once; while one group is being written the next one gathers, so under load many requests
//! share one fsync. The latency a request can gain from batching is bounded by one group's
//! commit time (the group ahead of it) plus its own.
//!
//! Hand-offs are batched too: a request enters the queue from the thread that decoded it (a
//! gateway I/O thread in embedded mode) and wakes the commit thread only when it was idle; the
//! answers and pushes of one group reach each I/O thread through its mailbox, woken once per
//! group. A backend offering [`Store::blocking_commit`] (the embedded store) writes on the
//! commit thread itself; any other is driven on the tokio runtime from it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tern_proto::v1::{self, Envelope, envelope::Body};
use tern_store::{Appended, Committed, NewMessage, Store, StoreError, Write};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::batching::Batching;
use crate::error::DispatchError;
use crate::group::cache::GroupCache;
use crate::metrics::DispatchMetrics;
use crate::offline::{Alert, Alerts};
use crate::push::{ConnRef, Pusher, fan_out};

/// Answers a request: called once, on any thread, with the response frame.
pub type Reply = Box<dyn FnOnce(Envelope) + Send>;

/// What to do with a write's outcome.
pub(crate) enum Then {
    /// Answer a Send (or Recall) with its SendAck.
    Ack { request_id: u64, reply: Reply },
    /// Answer a Receipt with the user's resulting watermarks.
    Receipt { request_id: u64, reply: Reply },
    /// Hand the outcome to an awaiting task.
    Wait(oneshot::Sender<Result<Appended, DispatchError>>),
    /// Tell an awaiting task the write is durable (flags).
    Done(oneshot::Sender<Result<(), DispatchError>>),
}

impl Then {
    pub(crate) fn fail(self, e: DispatchError) {
        match self {
            Then::Ack { request_id, reply } | Then::Receipt { request_id, reply } => {
                reply(e.to_frame(request_id))
            }
            Then::Wait(tx) => {
                let _ = tx.send(Err(e));
            }
            Then::Done(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// One write waiting to be committed, with what its outcome needs.
pub(crate) struct Job {
    pub(crate) write: Write,
    /// For a receipt: the conversation's members, who hear of a moved watermark. (An append
    /// carries its members in its message.)
    pub(crate) members: Vec<String>,
    /// The connection that caused it (pushes skip it).
    pub(crate) skip: Option<ConnRef>,
    pub(crate) then: Then,
}

/// Why the queue refused a job.
enum Refused {
    Full,
    Closed,
}

/// The waiting jobs: a mutex-guarded vector the commit thread swaps out whole.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    cap: usize,
}

#[derive(Default)]
struct QueueState {
    jobs: Vec<Job>,
    closed: bool,
    idle: bool,
    /// When the oldest waiting job arrived (set when the queue was empty).
    first_at: Option<Instant>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Critical sections are a push or a swap: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`; wakes the commit thread only when it waits for work. A refused job comes
    /// back with the reason.
    fn push(&self, job: Job) -> Option<(Refused, Job)> {
        let mut s = self.lock();
        if s.closed {
            return Some((Refused::Closed, job));
        }
        if s.jobs.len() >= self.cap {
            return Some((Refused::Full, job));
        }
        if s.jobs.is_empty() {
            s.first_at = Some(Instant::now());
        }
        s.jobs.push(job);
        if std::mem::take(&mut s.idle) {
            self.ready.notify_one();
        }
        None
    }

    /// Waits for work and moves up to `max` jobs into `into` (empty): at once, or when
    /// `batching` says so, up to its delay after the oldest job arrived (without being woken by
    /// each arrival meanwhile). False once closed and drained.
    fn take(&self, into: &mut Vec<Job>, max: usize, batching: &mut Batching) -> bool {
        let mut s = self.lock();
        while s.jobs.is_empty() {
            if s.closed {
                return false;
            }
            s.idle = true;
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if let (Some(delay), Some(first)) = (batching.wait(s.jobs.len(), max), s.first_at) {
            let deadline = first + delay;
            loop {
                let now = Instant::now();
                if now >= deadline || s.jobs.len() >= max || s.closed {
                    break;
                }
                s = self.ready.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        if s.jobs.len() <= max {
            std::mem::swap(&mut s.jobs, into);
            s.first_at = None;
        } else {
            into.extend(s.jobs.drain(..max));
            s.first_at = Some(Instant::now());
        }
        batching.taken(into.len(), Instant::now());
        true
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// The sending side of the pipeline. Dropping the last [`Dispatcher`](crate::Dispatcher)
/// does not stop the thread: [`Pipeline::shutdown`] does, after committing what waits.
pub struct Pipeline {
    queue: Arc<Queue>,
    metrics: Arc<DispatchMetrics>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Resolves to the outcome of one submitted append.
pub type Pending = oneshot::Receiver<Result<Appended, DispatchError>>;

impl Pipeline {
    /// Starts the commit thread; `rt` runs the store's futures and follow-up tasks.
    pub fn start(
        store: Arc<dyn Store>,
        pusher: Arc<dyn Pusher>,
        groups: Arc<GroupCache>,
        alerts: Arc<Alerts>,
        metrics: Arc<DispatchMetrics>,
        cfg: &crate::DispatchConfig,
        rt: Handle,
    ) -> Self {
        let (queue, max_batch, delay) =
            (cfg.pipeline_queue, cfg.max_commit_batch, cfg.commit_delay);
        let q =
            Arc::new(Queue { state: Mutex::default(), ready: Condvar::new(), cap: queue.max(1) });
        let worker = Committer { store, pusher, groups, alerts, metrics: metrics.clone(), rt };
        let (qc, max) = (q.clone(), max_batch.max(1));
        let thread = std::thread::Builder::new()
            .name("tern-commit".into())
            .spawn(move || worker.run(&qc, max, delay))
            .map_err(|e| tracing::error!(error = %e, "starting the commit thread failed"))
            .ok();
        if thread.is_none() {
            q.close();
        }
        Self { queue: q, metrics, thread: Mutex::new(thread) }
    }

    /// Enqueues a job now (so submissions keep their order). A full queue or a stopped
    /// pipeline answers the job at once with UNAVAILABLE.
    pub(crate) fn push(&self, job: Job) {
        match self.queue.push(job) {
            None => {}
            Some((Refused::Full, job)) => {
                self.metrics.pipeline_full.fetch_add(1, Relaxed);
                job.then.fail(DispatchError::Unavailable("send pipeline full, retry"));
            }
            Some((Refused::Closed, job)) => {
                job.then.fail(DispatchError::Unavailable("dispatch is shutting down"));
            }
        }
    }

    /// Enqueues an append whose outcome a task awaits (recalls).
    pub fn submit(&self, msg: NewMessage, skip: Option<ConnRef>) -> Pending {
        self.submit_write(Write::Append(msg), skip)
    }

    /// Enqueues an append or group change whose outcome a task awaits (a group change is
    /// neither pushed nor answered here: the task does both).
    pub fn submit_write(&self, write: Write, skip: Option<ConnRef>) -> Pending {
        let (tx, rx) = oneshot::channel();
        self.push(Job { write, members: Vec::new(), skip, then: Then::Wait(tx) });
        rx
    }

    /// Refuses new jobs, commits and answers those already queued, and joins the thread.
    pub fn shutdown(&self) {
        self.queue.close();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            tracing::error!("the commit thread panicked");
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Lets the thread finish; joining here could block a runtime thread on a commit.
        self.queue.close();
    }
}

/// Waits for a submitted append's outcome.
pub async fn outcome(pending: Pending) -> Result<Appended, DispatchError> {
    pending.await.unwrap_or(Err(DispatchError::Unavailable("commit task stopped")))
}

/// The commit thread's state.
struct Committer {
    store: Arc<dyn Store>,
    pusher: Arc<dyn Pusher>,
    groups: Arc<GroupCache>,
    alerts: Arc<Alerts>,
    metrics: Arc<DispatchMetrics>,
    rt: Handle,
}

impl Committer {
    fn run(self, queue: &Queue, max_batch: usize, delay: Duration) {
        let mut batching = Batching::new(delay, Instant::now());
        let mut jobs = Vec::with_capacity(max_batch);
        let mut writes = Vec::with_capacity(max_batch);
        let mut rest = Vec::with_capacity(max_batch);
        while queue.take(&mut jobs, max_batch, &mut batching) {
            for job in jobs.drain(..) {
                writes.push(job.write);
                rest.push((job.members, job.skip, job.then));
            }
            let started = Instant::now();
            let result = match self.store.blocking_commit() {
                Some(b) => b.commit_now(&writes),
                None => self.rt.block_on(self.store.commit(&writes)),
            };
            self.metrics.commit_seconds.observe(started.elapsed());
            self.metrics.commit_batches.fetch_add(1, Relaxed);
            match result {
                Ok(outcomes) if outcomes.len() == writes.len() => {
                    self.finish(writes.drain(..), rest.drain(..), outcomes);
                }
                other => {
                    self.metrics.store_errors.fetch_add(1, Relaxed);
                    let e = match other {
                        Err(e) => e,
                        Ok(_) => StoreError::Corrupt("wrong number of commit outcomes".into()),
                    };
                    tracing::error!(error = %e, "group commit failed");
                    let msg = e.to_string();
                    writes.clear();
                    for (_, _, then) in rest.drain(..) {
                        let e = match &e {
                            StoreError::Corrupt(_) => StoreError::Corrupt(msg.clone()),
                            _ => StoreError::Unavailable(msg.clone()),
                        };
                        then.fail(DispatchError::Store(e));
                    }
                }
            }
        }
    }

    /// Pushes and answers one committed group, in batch (= seq) order.
    fn finish(
        &self,
        writes: impl Iterator<Item = Write>,
        rest: impl Iterator<Item = (Vec<String>, Option<ConnRef>, Then)>,
        outcomes: Vec<Committed>,
    ) {
        // (conversation, user) of the receipts pushed in this group: a coalesced move is news
        // once, however many requests it answers.
        let mut pushed: Vec<(String, String)> = Vec::new();
        for ((write, (members, skip, then)), out) in writes.zip(rest).zip(outcomes) {
            match (write, out) {
                (Write::Append(msg), Committed::Appended(out)) => {
                    self.appended(msg, skip, then, out);
                }
                (Write::Watermark(w), Committed::Watermark(up)) => {
                    self.metrics.receipts.fetch_add(1, Relaxed);
                    let update = v1::ReceiptUpdate {
                        conversation_id: w.conversation_id,
                        user_id: w.user_id,
                        delivered_seq: up.watermarks.delivered,
                        read_seq: up.watermarks.read,
                    };
                    let key = (update.conversation_id.clone(), update.user_id.clone());
                    if up.moved && !pushed.contains(&key) {
                        let body = Body::ReceiptUpdate(update.clone());
                        fan_out(&*self.pusher, &members, body, skip.as_ref());
                        pushed.push(key);
                    }
                    answer(then, Body::ReceiptUpdate(update));
                }
                (Write::Group(_), Committed::Appended(out)) => {
                    self.metrics.accepted.fetch_add(1, Relaxed);
                    if let Then::Wait(tx) = then {
                        let _ = tx.send(Ok(out));
                    }
                }
                (Write::Flags(_), Committed::Flagged) => match then {
                    Then::Done(tx) => {
                        let _ = tx.send(Ok(()));
                    }
                    then => answer(then, Body::Ok(v1::Ok {})),
                },
                (Write::Append(_) | Write::Group(_), Committed::Refused(r)) => {
                    then.fail(DispatchError::refused(r));
                }
                (Write::Watermark(w), Committed::AboveLastSeq { last_seq }) => {
                    then.fail(DispatchError::Invalid(format!(
                        "receipt seq {} is above the conversation's last seq {last_seq}",
                        w.seq
                    )));
                }
                _ => {
                    self.metrics.store_errors.fetch_add(1, Relaxed);
                    then.fail(DispatchError::Store(StoreError::Corrupt(
                        "commit outcome of another kind than its write".into(),
                    )));
                }
            }
        }
    }

    fn appended(&self, mut msg: NewMessage, skip: Option<ConnRef>, then: Then, out: Appended) {
        if out.duplicate {
            self.metrics.duplicates.fetch_add(1, Relaxed);
            // Answered (and pushed again) once the original is read back.
            let (store, pusher) = (self.store.clone(), self.pusher.clone());
            self.rt.spawn(resend(store, pusher, msg, skip, then, out));
            return;
        }
        self.metrics.accepted.fetch_add(1, Relaxed);
        let members = std::mem::take(&mut msg.members);
        let client_msg_id = msg.client_msg_id.clone();
        let alert = (msg.kind == v1::MessageKind::Normal && self.alerts.enabled())
            .then(|| alert_of(&msg, &out, self.alerts.previews()));
        let message = stored(msg, &out);
        let body = Body::Deliver(v1::Deliver { message: Some(message) });
        if out.group_version > 0 {
            // A group message: its members from the cache, at its version or later.
            let frame = crate::push::encode_push(body);
            let alert = alert.map(|a| (a, self.alerts.clone()));
            self.groups.fan_out(&self.pusher, &self.rt, &out, frame, skip, alert);
        } else {
            fan_out(&*self.pusher, &members, body, skip.as_ref());
            if let Some(a) = alert {
                self.alerts.committed(a, members.into());
            }
        }
        ack(then, out, client_msg_id);
    }
}

/// The offline-push facts of a just-appended message.
fn alert_of(m: &NewMessage, out: &Appended, previews: bool) -> Alert {
    Alert {
        conversation_id: out.conversation_id.clone(),
        seq: out.seq,
        sender_user_id: m.sender_user_id.clone(),
        mention_user_ids: m.mention_user_ids.clone(),
        mention_all: m.mention_all,
        is_group: out.group_version > 0,
        preview: previews
            .then(|| crate::offline::plan::preview(&m.sender_user_id, &m.content_type, &m.body))
            .flatten(),
    }
}

/// Answers with `body` (a Wait or Done caller awaits another kind of outcome, so it never gets
/// here).
fn answer(then: Then, body: Body) {
    match then {
        Then::Ack { request_id, reply } | Then::Receipt { request_id, reply } => {
            reply(Envelope { request_id, body: Some(body) })
        }
        then @ (Then::Wait(_) | Then::Done(_)) => {
            then.fail(DispatchError::Unavailable("an outcome of another kind"))
        }
    }
}

/// Answers an append with its SendAck (or its outcome).
fn ack(then: Then, out: Appended, client_msg_id: String) {
    match then {
        Then::Wait(tx) => {
            let _ = tx.send(Ok(out));
        }
        then => answer(
            then,
            Body::SendAck(v1::SendAck {
                conversation_id: out.conversation_id,
                seq: out.seq,
                server_time_ms: out.server_time_ms,
                client_msg_id,
                duplicate: out.duplicate,
            }),
        ),
    }
}

/// Answers a resend: the original's ack when the request is the same (conversation, kind and
/// recall target), else CLIENT_MSG_ID_REUSED. A same resend also pushes the stored original
/// again: a resend usually means the sender never saw the ack, and the worker that committed
/// it may have died before pushing, so recipients would otherwise learn of the message only at
/// their next sync. Recipients that already have it drop the copy by the cursor rules. A reuse
/// is never pushed, so a crafted resend cannot reveal a message to another conversation.
async fn resend(
    store: Arc<dyn Store>,
    pusher: Arc<dyn Pusher>,
    msg: NewMessage,
    skip: Option<ConnRef>,
    then: Then,
    out: Appended,
) {
    match same_request(&*store, &msg, &out).await {
        Ok(Some(original)) => {
            let body = Body::Deliver(v1::Deliver { message: Some(original) });
            fan_out(&*pusher, &msg.members, body, skip.as_ref());
            ack(then, out, msg.client_msg_id);
        }
        Ok(None) => ack(then, out, msg.client_msg_id),
        Err(e) => then.fail(e),
    }
}

/// Checks a resend against its stored original. `Ok(Some(original))`: the same request;
/// `Ok(None)`: the original is not readable (answer the ack, push nothing); `Err`: a reuse
/// for another request, or the read failed (the client retries).
async fn same_request(
    store: &dyn Store,
    m: &NewMessage,
    out: &Appended,
) -> Result<Option<v1::Message>, DispatchError> {
    if out.conversation_id != m.conversation_id {
        return Err(DispatchError::ClientMsgIdReused("another conversation"));
    }
    let Some(original) = store.get_message(&out.conversation_id, out.seq).await? else {
        return Ok(None);
    };
    if original.kind != m.kind as i32 {
        return Err(DispatchError::ClientMsgIdReused("another kind of request"));
    }
    if m.kind == v1::MessageKind::Recall && original.recalled_seq != m.recalled_seq {
        return Err(DispatchError::ClientMsgIdReused("a recall of another message"));
    }
    Ok(Some(original))
}

/// The stored form of a just-appended message, built from the request it consumes.
pub(crate) fn stored(m: NewMessage, out: &Appended) -> v1::Message {
    v1::Message {
        conversation_id: m.conversation_id,
        seq: out.seq,
        sender_user_id: m.sender_user_id,
        sender_device_id: m.sender_device_id,
        client_msg_id: m.client_msg_id,
        server_time_ms: out.server_time_ms,
        kind: m.kind as i32,
        content_type: m.content_type,
        body: m.body,
        recalled_seq: m.recalled_seq,
        recalled: false,
        mention_user_ids: m.mention_user_ids,
        mention_all: m.mention_all,
    }
}
