//! The delivery-contract checker for chaos tests: records every ack a sender saw and every
//! message each device's app received, then checks them against the store's truth (read by
//! sync): every ack names a stored message with that seq, and each device saw every stored
//! message of its conversations exactly once and in order (its own acked sends excepted: the
//! SDK hands those to the app through the ack, not as events). Any second message at one seq -
//! two acks naming one (conversation, seq) with different client ids, one client id acked at
//! two seqs, or a sync page holding a seq twice - is a violation, whenever it is seen.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tern_proto::v1;
use tern_sdk::{Client, Event};
use tokio::sync::mpsc::Receiver;

/// A device: (user, device).
pub type Device = (String, String);

#[derive(Default)]
struct Inner {
    /// Acks each device's `send()` returned: conversation -> seqs.
    acked: HashMap<Device, BTreeMap<String, BTreeSet<u64>>>,
    /// Client ids of acked sends, by (conversation, seq).
    ack_ids: HashMap<(String, u64), String>,
    /// (conversation, seq) of each acked client id.
    ack_seqs: HashMap<String, (String, u64)>,
    /// Contract violations seen while recording (a seq given twice), reported by `verify`.
    violations: Vec<String>,
    /// Messages each device's app received, in arrival order, per conversation.
    received: HashMap<Device, BTreeMap<String, Vec<(u64, String)>>>,
}

/// Shared record of a chaos run.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
    /// The number of distinct acks, for [`Ledger::wait_acks`].
    acked: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Ledger {
    fn default() -> Self {
        let acked = Arc::new(tokio::sync::watch::Sender::new(0));
        Self { inner: Arc::default(), acked }
    }
}

impl Ledger {
    /// Waits until at least `n` distinct acks were recorded; false after `within`.
    pub async fn wait_acks(&self, n: usize, within: std::time::Duration) -> bool {
        let mut rx = self.acked.subscribe();
        tokio::time::timeout(within, rx.wait_for(|a| *a >= n)).await.is_ok()
    }

    /// Records an ack returned to `device`.
    pub fn ack(&self, device: &Device, ack: &v1::SendAck) {
        let mut i = self.inner.lock().unwrap();
        i.acked
            .entry(device.clone())
            .or_default()
            .entry(ack.conversation_id.clone())
            .or_default()
            .insert(ack.seq);
        let at = (ack.conversation_id.clone(), ack.seq);
        let id = ack.client_msg_id.clone();
        // Never overwrite: a second message at one seq (or one message at two seqs) is the
        // very thing the chaos tests look for.
        if let Some(first) = i.ack_ids.get(&at).cloned() {
            if first != id {
                i.violations.push(format!(
                    "{}#{} acked twice: to {first} and to {id} (a seq given twice)",
                    at.0, at.1
                ));
            }
        } else {
            i.ack_ids.insert(at.clone(), id.clone());
        }
        if let Some(first) = i.ack_seqs.get(&id).cloned() {
            if first != at {
                i.violations.push(format!(
                    "client id {id} acked at {}#{} and at {}#{} (one message, two seqs)",
                    first.0, first.1, at.0, at.1
                ));
            }
        } else {
            i.ack_seqs.insert(id, at);
        }
        let n = i.ack_ids.len();
        drop(i);
        self.acked.send_replace(n);
    }

    /// Drains `events` of `device` into the ledger until the stream ends (spawn it).
    pub fn watch(
        &self,
        device: Device,
        mut events: Receiver<Event>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let Event::Message(m) = ev {
                    let mut i = this.inner.lock().unwrap();
                    i.received
                        .entry(device.clone())
                        .or_default()
                        .entry(m.conversation_id.clone())
                        .or_default()
                        .push((m.seq, m.client_msg_id.clone()));
                }
            }
        })
    }

    /// How many acks were recorded.
    pub fn acks(&self) -> usize {
        self.inner.lock().unwrap().ack_ids.len()
    }

    /// How many messages `device` received in `conversation` so far.
    pub fn received_count(&self, device: &Device, conversation: &str) -> usize {
        let i = self.inner.lock().unwrap();
        i.received.get(device).and_then(|c| c.get(conversation)).map_or(0, Vec::len)
    }

    /// Checks the contract for `devices` (each with the conversations its user is in) against
    /// `stored`: conversation -> (seq -> client_msg_id) read from the server, plus the seqs sync
    /// reported missing. Returns the first violation.
    pub fn verify(
        &self,
        devices: &[(Device, Vec<String>)],
        stored: &HashMap<String, (BTreeMap<u64, String>, BTreeSet<u64>)>,
    ) -> Result<(), String> {
        macro_rules! ensure {
            ($cond:expr, $($fmt:tt)+) => {
                if !$cond {
                    return Err(format!($($fmt)+));
                }
            };
        }
        let i = self.inner.lock().unwrap();
        // 0. One message per seq, one seq per message, in what the senders were told.
        if let Some(v) = i.violations.first() {
            return Err(v.clone());
        }
        // 1. Accepted means durable; one seq per message.
        for ((conv, seq), id) in &i.ack_ids {
            let Some((msgs, _)) = stored.get(conv) else {
                return Err(format!("acked conversation {conv} not stored"));
            };
            ensure!(msgs.get(seq) == Some(id), "ack {conv}#{seq} ({id}) not stored as acked");
        }
        for (conv, (msgs, _)) in stored {
            let mut ids = BTreeSet::new();
            for id in msgs.values() {
                ensure!(ids.insert(id), "client id {id} stored twice in {conv}");
            }
        }
        // 2. Everyone gets everything once, in order.
        for (device, convs) in devices {
            for conv in convs {
                let Some((msgs, missing)) = stored.get(conv) else {
                    return Err(format!("conversation {conv} not read"));
                };
                let got =
                    i.received.get(device).and_then(|c| c.get(conv)).cloned().unwrap_or_default();
                for w in got.windows(2) {
                    ensure!(
                        w[0].0 < w[1].0,
                        "{device:?} in {conv}: {} then {} (out of order or twice)",
                        w[0].0,
                        w[1].0
                    );
                }
                let own: BTreeSet<u64> =
                    i.acked.get(device).and_then(|c| c.get(conv)).cloned().unwrap_or_default();
                let mut seen: BTreeSet<u64> = BTreeSet::new();
                for (seq, id) in &got {
                    ensure!(
                        !own.contains(seq),
                        "{device:?} got its own acked send {conv}#{seq} as an event"
                    );
                    ensure!(
                        msgs.get(seq) == Some(id),
                        "{device:?} got {conv}#{seq} ({id}) which is not stored so"
                    );
                    seen.insert(*seq);
                }
                seen.extend(own.iter().copied());
                let expected: BTreeSet<u64> = msgs.keys().copied().collect();
                let lost: Vec<u64> = expected.difference(&seen).copied().collect();
                let lost_ids: Vec<&String> = lost.iter().filter_map(|s| msgs.get(s)).collect();
                ensure!(
                    lost.is_empty(),
                    "{device:?} never saw {conv} seqs {lost:?} (client ids {lost_ids:?})"
                );
                let extra: Vec<u64> =
                    seen.difference(&expected).filter(|s| !missing.contains(s)).copied().collect();
                ensure!(extra.is_empty(), "{device:?} saw unknown {conv} seqs {extra:?}");
            }
        }
        Ok(())
    }
}

/// Reads a whole conversation by sync through `client`: seq -> client id, and the missing seqs.
pub async fn read_all(client: &Client, conv: &str) -> (BTreeMap<u64, String>, BTreeSet<u64>) {
    let mut msgs = BTreeMap::new();
    let mut missing = BTreeSet::new();
    let mut from = 1;
    loop {
        let page = client.sync_page(conv, from, 500).await.expect("sync page");
        for m in page.messages {
            let (seq, id) = (m.seq, m.client_msg_id);
            if let Some(first) = msgs.insert(seq, id.clone()) {
                panic!("sync of {conv} returned seq {seq} twice: {first} and {id}");
            }
        }
        for r in page.missing {
            missing.extend(r.first..=r.last);
        }
        if !page.has_more {
            return (msgs, missing);
        }
        from = page.next_from_seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(conv: &str, seq: u64, id: &str) -> v1::SendAck {
        v1::SendAck {
            conversation_id: conv.into(),
            seq,
            client_msg_id: id.into(),
            ..Default::default()
        }
    }

    fn device(user: &str) -> Device {
        (user.into(), "phone".into())
    }

    /// The store's truth for conversation "c": the given (seq, client id) pairs.
    fn stored(rows: &[(u64, &str)]) -> HashMap<String, (BTreeMap<u64, String>, BTreeSet<u64>)> {
        let msgs = rows.iter().map(|&(s, id)| (s, id.to_owned())).collect();
        [("c".to_owned(), (msgs, BTreeSet::new()))].into_iter().collect()
    }

    #[test]
    fn a_seq_acked_to_two_messages_fails_whichever_the_store_kept() {
        // Two senders were both told seq 1. Whichever of the two the store holds, the ledger
        // must fail (before, the second ack overwrote the first: one of the two orders passed).
        for kept in ["a-1", "b-1"] {
            for order in [["a-1", "b-1"], ["b-1", "a-1"]] {
                let l = Ledger::default();
                for id in order {
                    l.ack(&device(&id[..1]), &ack("c", 1, id));
                }
                let err = l.verify(&[], &stored(&[(1, kept)])).expect_err("a reused seq passed");
                assert!(err.contains("acked twice"), "{err}");
            }
        }
    }

    #[test]
    fn one_message_acked_at_two_seqs_fails() {
        let l = Ledger::default();
        l.ack(&device("a"), &ack("c", 1, "a-1"));
        l.ack(&device("a"), &ack("c", 2, "a-1"));
        let err = l.verify(&[], &stored(&[(1, "a-1"), (2, "a-1")])).expect_err("passed");
        assert!(err.contains("two seqs"), "{err}");
    }

    #[test]
    fn a_true_resend_ack_is_fine() {
        let l = Ledger::default();
        l.ack(&device("a"), &ack("c", 1, "a-1"));
        l.ack(&device("a"), &ack("c", 1, "a-1"));
        l.ack(&device("a"), &ack("c", 2, "a-2"));
        assert_eq!(l.acks(), 2);
        l.verify(&[], &stored(&[(1, "a-1"), (2, "a-2")])).expect("a clean run passes");
    }
}
