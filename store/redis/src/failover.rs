//! Failover safety of [`RedisStore`]: the history fence run at connect (and by every append
//! batch, inside the append script), its log lines, and `WAIT min_replicas_acked` after an
//! append. The crate doc's "Failover" section says what each guarantees.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tracing::{info, warn};

use crate::error::RedisStoreError;
use crate::scripts;
use crate::store::{RedisStore, with_timeout};

/// The failover settings and, with `WAIT`, the appends' own connection (a `WAIT` blocks the
/// connection it runs on; on the shared one it would hold up every read behind it).
#[derive(Clone)]
pub(crate) struct Failover {
    pub(crate) seq_gap: u64,
    pub(crate) min_replicas_acked: u32,
    pub(crate) append_conn: Option<ConnectionManager>,
}

impl RedisStore {
    /// Runs the history fence once at connect, so that a takeover is logged (and, with
    /// `failover_seq_gap = 0`, refused) at start rather than at the first send. Every append
    /// batch runs the same check again, atomically with its writes.
    pub(crate) async fn check_history(&self) -> Result<(), RedisStoreError> {
        let (history, node, gap) = (self.keys.history(), self.keys.node(), self.failover.seq_gap);
        let reply: Vec<String> = self
            .run(|mut conn| async move {
                let mut invocation = scripts::HISTORY.prepare_invoke();
                invocation.key(&history).key(&node).arg(gap);
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        match &reply[..] {
            [gap, event] => {
                self.history_event(event, gap);
                Ok(())
            }
            _ => Err(RedisStoreError::Corrupt {
                key: self.keys.history(),
                what: format!("history script answered {reply:?}"),
            }),
        }
    }

    /// Logs what the history fence saw ("" = nothing changed).
    pub(crate) fn history_event(&self, event: &str, gap: &str) {
        match event {
            "" => {}
            "failover" => warn!(
                addr = %self.addr,
                total_seq_gap = gap,
                "the store Redis took over from another node (promoted replica): every \
                 conversation continues failover_seq_gap seqs higher; acknowledged messages \
                 the old primary had not replicated are lost and reported missing by sync"
            ),
            "restart" => {
                info!(addr = %self.addr, "the store Redis restarted (same node, AOF replayed)")
            }
            other => info!(addr = %self.addr, event = other, "Redis store history recorded"),
        }
    }

    /// The commit script and `WAIT min_replicas_acked` in one pipeline, so both run on the same
    /// connection (WAIT waits for that connection's last write; the script always writes when the batch has an append, so
    /// the answer of a duplicate waits for the original too). NOSCRIPT: load, run once more.
    pub(crate) async fn commit_and_wait(
        &self,
        conn: ConnectionManager,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<String>, RedisStoreError> {
        let wanted = self.failover.min_replicas_acked;
        let wait = (self.timeout / 2).max(Duration::from_millis(1));
        let mut pipe = redis::pipe();
        pipe.invoke_script(invocation).cmd("WAIT").arg(wanted).arg(wait.as_millis() as u64);
        let mut conn = conn;
        let attempt = async {
            match pipe.query_async(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    scripts::COMMIT.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await
                }
                other => other,
            }
        };
        let (reply, acked): (Vec<String>, u32) = with_timeout(self.timeout, attempt).await?;
        if acked < wanted {
            return Err(RedisStoreError::ReplicasBehind { acked, wanted, timeout: wait });
        }
        Ok(reply)
    }
}
