//! Group commit. Every accepted message goes through one queue; a single task takes whatever
//! waits (up to `max_commit_batch`), appends it to the store in one durable write, then pushes
//! the new messages in sequence order and answers each waiting sender. While one write is in
//! flight the next batch gathers, so fsyncs are shared by many sends under load.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tern_proto::v1::{self, envelope::Body};
use tern_store::{Appended, NewMessage, Store};
use tokio::sync::{mpsc, oneshot};

use crate::error::DispatchError;
use crate::metrics::DispatchMetrics;
use crate::push::{ConnRef, Pusher, fan_out};

/// One message waiting to be committed.
struct Job {
    msg: NewMessage,
    skip: Option<ConnRef>,
    reply: oneshot::Sender<Result<Appended, DispatchError>>,
}

/// The sending side of the pipeline.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Job>,
    metrics: Arc<DispatchMetrics>,
}

/// Resolves to the outcome of one submitted message.
pub type Pending = oneshot::Receiver<Result<Appended, DispatchError>>;

impl Pipeline {
    /// Starts the commit task on the current tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        pusher: Arc<dyn Pusher>,
        metrics: Arc<DispatchMetrics>,
        queue: usize,
        max_batch: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(run(rx, store, pusher, metrics.clone(), max_batch.max(1)));
        Self { tx, metrics }
    }

    /// Enqueues a message now (so submissions keep their order) and returns its outcome's
    /// receiver. Fails at once with UNAVAILABLE when the queue is full.
    pub fn submit(&self, msg: NewMessage, skip: Option<ConnRef>) -> Result<Pending, DispatchError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { msg, skip, reply }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.pipeline_full.fetch_add(1, Relaxed);
                Err(DispatchError::Unavailable("send pipeline full, retry"))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(DispatchError::Unavailable("dispatch is shutting down"))
            }
        }
    }
}

/// Waits for a submitted message's outcome.
pub async fn outcome(pending: Pending) -> Result<Appended, DispatchError> {
    pending.await.unwrap_or(Err(DispatchError::Unavailable("commit task stopped")))
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<dyn Store>,
    pusher: Arc<dyn Pusher>,
    metrics: Arc<DispatchMetrics>,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let batch: Vec<NewMessage> = jobs.iter().map(|j| j.msg.clone()).collect();
        let result = store.append(batch).await;
        metrics.commit_batches.fetch_add(1, Relaxed);
        match result {
            Ok(outcomes) if outcomes.len() == jobs.len() => {
                for (job, out) in jobs.drain(..).zip(outcomes) {
                    if out.duplicate {
                        metrics.duplicates.fetch_add(1, Relaxed);
                        // Answered (and pushed again) once the original is read back.
                        tokio::spawn(resend(store.clone(), pusher.clone(), job, out));
                        continue;
                    }
                    metrics.accepted.fetch_add(1, Relaxed);
                    let message = stored_message(&job.msg, &out);
                    fan_out(
                        &*pusher,
                        &job.msg.members,
                        Body::Deliver(v1::Deliver { message: Some(message) }),
                        job.skip.as_ref(),
                    );
                    let _ = job.reply.send(Ok(out));
                }
            }
            Ok(_) => {
                metrics.store_errors.fetch_add(1, Relaxed);
                tracing::error!("store returned a wrong number of outcomes");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(DispatchError::Store(
                        tern_store::StoreError::Corrupt("wrong number of append outcomes".into()),
                    )));
                }
            }
            Err(e) => {
                metrics.store_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "append failed");
                let msg = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(DispatchError::Store(
                        tern_store::StoreError::Unavailable(msg.clone()),
                    )));
                }
            }
        }
    }
}

/// Answers a resend: the original's ack when the request is the same (conversation, kind and
/// recall target), else CLIENT_MSG_ID_REUSED. A same resend also pushes the stored original
/// again: a resend usually means the sender never saw the ack, and the worker that committed
/// it may have died before pushing, so recipients would otherwise learn of the message only at
/// their next sync. Recipients that already have it drop the copy by the cursor rules. A reuse
/// is never pushed, so a crafted resend cannot reveal a message to another conversation.
async fn resend(store: Arc<dyn Store>, pusher: Arc<dyn Pusher>, job: Job, out: Appended) {
    let answer = match same_request(&*store, &job.msg, &out).await {
        Ok(Some(original)) => {
            let body = Body::Deliver(v1::Deliver { message: Some(original) });
            fan_out(&*pusher, &job.msg.members, body, job.skip.as_ref());
            Ok(out)
        }
        Ok(None) => Ok(out),
        Err(e) => Err(e),
    };
    let _ = job.reply.send(answer);
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

/// The stored form of a just-appended message.
pub fn stored_message(m: &NewMessage, out: &Appended) -> v1::Message {
    v1::Message {
        conversation_id: out.conversation_id.clone(),
        seq: out.seq,
        sender_user_id: m.sender_user_id.clone(),
        sender_device_id: m.sender_device_id.clone(),
        client_msg_id: m.client_msg_id.clone(),
        server_time_ms: out.server_time_ms,
        kind: m.kind as i32,
        content_type: m.content_type.clone(),
        body: m.body.clone(),
        recalled_seq: m.recalled_seq,
        recalled: false,
    }
}
