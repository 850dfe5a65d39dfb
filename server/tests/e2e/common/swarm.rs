//! A small swarm of SDK bots for contract tests: every user has several devices, every device
//! keeps sending 1:1 messages to the other users and, every third send, to one group of all
//! the users, and the [`Ledger`] records what each saw.
//! After the chaos, `fence` sends one more message per conversation on a healthy system (its
//! push reveals any gap a lost push left), and `settle_and_verify` waits for the devices to
//! catch up and checks the contract against the store.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tern_gateway::TokenKey;
use tern_sdk::{Client, ClientConfig, MemoryPersistence, Target};

use super::ledger::{Device, Ledger, read_all};
use super::{now_secs, text};

/// The running swarm.
pub struct Swarm {
    /// What everyone saw.
    pub ledger: Ledger,
    /// Every device with its client and its user's conversations.
    pub devices: Vec<(Device, Client, Vec<String>)>,
    users: Vec<String>,
    /// The group of all users.
    pub group: String,
    stop: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    /// Send attempts that returned an error (timeouts across a failure, UNAVAILABLE...).
    pub send_errors: Arc<AtomicU64>,
}

fn conv(a: &str, b: &str) -> String {
    tern_proto::ids::direct_conversation_id(a, b).unwrap()
}

impl Swarm {
    /// Connects `users` × `devices` bots to `addr` (one address or a comma-separated list) and
    /// starts them sending, each device at most one send in flight.
    pub async fn start(
        addr: &str,
        key: &TokenKey,
        prefix: &str,
        users: usize,
        devices: usize,
    ) -> Self {
        Self::start_trusting(addr, tern_sdk::Trust::default(), key, prefix, users, devices).await
    }

    /// [`Swarm::start`] with the SDK trusting `trust` (for `quic://` addresses).
    pub async fn start_trusting(
        addr: &str,
        trust: tern_sdk::Trust,
        key: &TokenKey,
        prefix: &str,
        users: usize,
        devices: usize,
    ) -> Self {
        let ledger = Ledger::default();
        let names: Vec<String> = (0..users).map(|u| format!("{prefix}{u}")).collect();
        let mut all = Vec::new();
        for user in &names {
            for d in 0..devices {
                let device = (user.clone(), format!("d{d}"));
                let token = key.mint_for(user, &device.1, now_secs(), 3600);
                let mut cfg = ClientConfig::new(addr.to_owned(), token);
                cfg.send_timeout = Duration::from_secs(20);
                cfg.trust = trust.clone();
                let (client, events) = Client::connect(cfg, Arc::new(MemoryPersistence::default()))
                    .await
                    .expect("bot connect");
                ledger.watch(device.clone(), events);
                let convs: Vec<String> =
                    names.iter().filter(|u| *u != user).map(|u| conv(user, u)).collect();
                all.push((device, client, convs));
            }
        }
        // One group of everyone, made by the first device. Its creation event is not pushed
        // to that connection (it has the GroupInfo answer); the device reads it by sync at the
        // first gap, like any message it missed.
        let request = format!("{prefix}group");
        let others: Vec<&str> = names.iter().skip(1).map(String::as_str).collect();
        // Retried while the network chaos closes connections under it: the request id makes a
        // retried create return the group the first one made.
        let mut attempts = 0;
        let info = loop {
            match all[0].1.create_group("swarm", &others, &request).await {
                Ok(info) => break info,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    tracing_free_log(&format!("create group failed ({e}), retrying"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create group: {e:?}"),
            }
        };
        let group = info.conversation_id.clone();
        for (_, _, convs) in &mut all {
            convs.push(group.clone());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let send_errors = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        for (device, client, _) in &all {
            let (device, client, stop, ledger, errors) =
                (device.clone(), client.clone(), stop.clone(), ledger.clone(), send_errors.clone());
            let peers: Vec<String> = names.iter().filter(|u| **u != device.0).cloned().collect();
            let group = group.clone();
            senders.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    let target = match n % 3 {
                        2 => Target::Conversation(group.clone()),
                        _ => Target::Peer(peers[n as usize % peers.len()].clone()),
                    };
                    let id = format!("{}-{}-{n}", device.0, device.1);
                    n += 1;
                    match client.send_with_id(target, id, "text/plain", text("x")).await {
                        Ok(ack) => ledger.ack(&device, &ack),
                        Err(_) => {
                            errors.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }));
        }
        Self { ledger, devices: all, users: names, group, stop, senders, send_errors }
    }

    /// Stops sending and waits for the senders (each ends within its send timeout).
    pub async fn stop_sending(&mut self) {
        self.stop.store(true, Relaxed);
        for s in self.senders.drain(..) {
            let _ = s.await;
        }
    }

    /// One more message per (device, peer) and per device in the group, retried until
    /// acknowledged: on a healthy system its
    /// push tells every other device of the conversation where the conversation ends.
    pub async fn fence(&self) {
        for (device, client, _) in &self.devices {
            let peers = self.users.iter().filter(|u| **u != device.0);
            let targets = peers
                .map(|p| (format!("fence-{p}"), Target::Peer(p.clone())))
                .chain([("fence-group".to_owned(), Target::Conversation(self.group.clone()))]);
            for (name, target) in targets {
                let id = format!("{}-{}-{name}", device.0, device.1);
                for attempt in 0.. {
                    match client
                        .send_with_id(target.clone(), id.clone(), "text/plain", text("f"))
                        .await
                    {
                        Ok(ack) => {
                            self.ledger.ack(device, &ack);
                            break;
                        }
                        Err(e) if attempt < 20 => {
                            tracing_free_log(&format!("fence send failed ({e}), retrying"));
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => panic!("fence send never succeeded: {e}"),
                    }
                }
            }
        }
    }

    /// Reads every conversation from the server and checks the contract, retrying while the
    /// devices catch up, for at most `within`.
    pub async fn settle_and_verify(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let who: Vec<(Device, Vec<String>)> =
            self.devices.iter().map(|(d, _, c)| (d.clone(), c.clone())).collect();
        loop {
            let mut stored = HashMap::new();
            for (_, client, convs) in &self.devices {
                for c in convs {
                    if !stored.contains_key(c) {
                        stored.insert(c.clone(), read_all(client, c).await);
                    }
                }
            }
            match self.ledger.verify(&who, &stored) {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("delivery contract violated: {e}"),
            }
        }
    }

    /// Closes every client.
    pub async fn close(&self) {
        for (_, client, _) in &self.devices {
            client.close().await;
        }
    }
}

fn tracing_free_log(msg: &str) {
    eprintln!("swarm: {msg}");
}
