//! The delivery-contract checker for chaos tests: records every ack a sender saw and every
//! message each device's app received, then checks them against the store's truth (read by
//! sync): every ack names a stored message with that seq, and each device saw every stored
//! message of its conversations exactly once and in order (its own acked sends excepted: the
//! SDK hands those to the app through the ack, not as events).
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
    /// Messages each device's app received, in arrival order, per conversation.
    received: HashMap<Device, BTreeMap<String, Vec<(u64, String)>>>,
}

/// Shared record of a chaos run.
#[derive(Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

impl Ledger {
    /// Records an ack returned to `device`.
    pub fn ack(&self, device: &Device, ack: &v1::SendAck) {
        let mut i = self.inner.lock().unwrap();
        i.acked
            .entry(device.clone())
            .or_default()
            .entry(ack.conversation_id.clone())
            .or_default()
            .insert(ack.seq);
        i.ack_ids.insert((ack.conversation_id.clone(), ack.seq), ack.client_msg_id.clone());
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
            msgs.insert(m.seq, m.client_msg_id);
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
