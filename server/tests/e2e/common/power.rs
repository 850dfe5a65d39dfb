//! A power cut under load: `tern serve` with its data directory on a [`LazyFs`] mount, senders
//! recording every ack, the power cut (now, or at the next fsync, i.e. inside a commit), the
//! server killed, the filesystem mounted again and the server restarted on what survived; then
//! every conversation is read back by sync and every acked message looked for, with its seq and
//! body.
//!
//! It knows the server only by its config keys and its data directory, not by its store, so it
//! holds for whatever store runs under `tern serve`. [`run`] is the whole run; a test picks the
//! [`Scenario`] (what the filesystem does, when and how the power goes) and asserts on the
//! [`Outcome`]: [`Outcome::assert_durable`] for a run that must keep everything,
//! `outcome.check` being `Err` for one that must lose.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_sdk::{Client, Target};
use tern_testkit::TernProcess;
use tern_testkit::lazyfs::{Cut, LazyFs, LazyFsOptions, Stats};

use super::{WAIT, chat, connect, now_secs, test_key, text};

/// When the power goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// As soon as [`Scenario::acks_before_cut`] acks were received, wherever the server is.
    Now,
    /// At the `n`th fsync (1: the first) after that many acks, instead of it: inside a
    /// commit, losing exactly what it was making durable. Needs a server that fsyncs (never
    /// comes with `store.fsync=false`).
    AtFsync(u64),
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Extra `section.key=value` settings for `tern serve`.
    pub set: Vec<String>,
    /// How the filesystem behaves until the cut (e.g. fsyncs ignored).
    pub fs: LazyFsOptions,
    /// What survives of the unsynced writes.
    pub cut: Cut,
    /// When the power goes.
    pub when: When,
    /// Acks to wait for before the cut (the cut comes with more sends in flight).
    pub acks_before_cut: usize,
    /// Sender→receiver pairs, each in its own conversation.
    pub pairs: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            set: Vec::new(),
            fs: LazyFsOptions::default(),
            cut: Cut::DropAll,
            when: When::AtFsync(1),
            acks_before_cut: 200,
            pairs: 4,
        }
    }
}

/// One acked message: what its sender was told, and what it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub conversation: String,
    pub seq: u64,
    pub client_msg_id: String,
    pub body: Vec<u8>,
}

/// Acked messages that the restarted server does not serve as acked.
#[derive(Debug)]
pub struct Loss {
    /// Acked, and no message at that seq.
    pub missing: Vec<Acked>,
    /// Acked, and another message (or another body) at that seq.
    pub changed: Vec<(Acked, String)>,
    /// How many acks were checked.
    pub acked: usize,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} acked messages lost, {} changed",
            self.missing.len(),
            self.acked,
            self.changed.len()
        )?;
        for a in self.missing.iter().take(5) {
            write!(f, "; lost {}#{} ({})", a.conversation, a.seq, a.client_msg_id)?;
        }
        for (a, what) in self.changed.iter().take(5) {
            write!(f, "; {}#{} acked as {} but {what}", a.conversation, a.seq, a.client_msg_id)?;
        }
        Ok(())
    }
}

/// What a run saw.
#[derive(Debug)]
pub struct Outcome {
    /// Every ack the senders received, before and after the cut.
    pub acked: Vec<Acked>,
    /// The filesystem's counters at the cut (writes, fsyncs, unsynced bytes dropped).
    pub at_cut: Stats,
    /// `Err(log tail)` if the server did not start again on what survived.
    pub restart: Result<(), String>,
    /// Every acked message served back as acked, or what is not.
    pub check: Result<(), Loss>,
    /// Wall time of the whole run, in milliseconds.
    pub millis: u128,
}

impl Outcome {
    /// Panics unless the server restarted and serves every acked message.
    pub fn assert_durable(&self) {
        if let Err(logs) = &self.restart {
            panic!("the server did not start on what survived the power cut:\n{logs}");
        }
        if let Err(loss) = &self.check {
            panic!(
                "acked messages did not survive the power cut: {loss} (at the cut: {:?})",
                self.at_cut
            );
        }
        assert!(!self.acked.is_empty(), "no ack at all: the run proved nothing");
    }

    /// Panics unless the cut found unsynced data to drop (or tear): a cut inside a commit.
    pub fn assert_cut_inside_a_commit(&self) {
        assert!(
            self.at_cut.cut_unsynced_bytes > 0,
            "the power was cut with nothing unsynced: it proved nothing ({:?})",
            self.at_cut
        );
    }
}

/// Runs `scenario`; `None` (with a message) where FUSE is unavailable.
pub async fn run(scenario: Scenario) -> Option<Outcome> {
    if let Some(why) = tern_testkit::lazyfs::unavailable() {
        eprintln!("skipping the power-loss test: {why}");
        return None;
    }
    let started = Instant::now();
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let fs = LazyFs::mount_with(backing.path(), mnt.path(), scenario.fs.clone()).unwrap();
    let data_dir = mnt.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let key = test_key();
    // The key in the config, not in <data_dir>/jwt.key: a run whose disk loses the key file
    // (fsyncs ignored) must still reach the messages.
    let mut args = vec!["--set".to_owned(), format!("auth.hs256_key={}", key.to_base64())];
    for s in &scenario.set {
        args.extend(["--set".to_owned(), s.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = tokio::task::block_in_place(|| chat::serve(&data_dir, &args));
    let addr = server.client_addr().expect("tern serve announces client=");

    // Senders: each sends to its own receiver until its client fails; every ack is recorded.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let mut senders: Vec<(Client, tokio::task::JoinHandle<()>)> = Vec::new();
    for i in 0..scenario.pairs {
        let token = key.mint_for(&format!("s{i}"), "phone", now_secs(), 3600);
        let (client, _events) = connect(addr, &token).await;
        let task =
            tokio::spawn(send_until_failure(client.clone(), i, acked.clone(), count_tx.clone()));
        senders.push((client, task));
    }
    let want = scenario.acks_before_cut;
    tokio::time::timeout(WAIT, count_rx.wait_for(|n| *n >= want))
        .await
        .expect("acks before the cut in time")
        .expect("senders alive");

    let at_cut = tokio::task::block_in_place(|| {
        match scenario.when {
            When::Now => fs.power_cut(scenario.cut).unwrap(),
            When::AtFsync(n) => {
                fs.power_cut_at_fsync(n, scenario.cut);
                fs.wait_for_cut(WAIT).unwrap();
            }
        }
        // The dying server cannot write any more; now it dies.
        stop(&mut server);
        fs.stats()
    });
    for (client, task) in senders {
        client.close().await;
        task.abort();
        let _ = task.await;
    }
    let acked: Vec<Acked> = acked.lock().unwrap().clone();

    // Power back: mount the same backing directory again, start the server on it.
    let fs = tokio::task::block_in_place(|| {
        fs.unmount().unwrap();
        LazyFs::mount(backing.path(), mnt.path()).unwrap()
    });
    let restart = tokio::task::block_in_place(|| server.start_again())
        .map_err(|e| format!("{e}\n{}", server.logs()));
    let check = match restart {
        Ok(()) => check(&server, &key, &acked, scenario.pairs).await,
        Err(_) => Ok(()),
    };
    tokio::task::block_in_place(|| {
        stop(&mut server);
        fs.unmount().unwrap();
    });
    Some(Outcome { acked, at_cut, restart, check, millis: started.elapsed().as_millis() })
}

/// SIGKILL, unless it already exited by itself (a server may stop on its first EIO).
fn stop(server: &mut TernProcess) {
    match server.kill9() {
        Ok(()) | Err(tern_testkit::ProcessError::NotRunning { .. }) => {}
        Err(e) => panic!("{e}"),
    }
}

/// Sender `i`: `s{i}` to `r{i}`, numbered ids, bodies that name them, until a send fails.
async fn send_until_failure(
    client: Client,
    i: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
) {
    for n in 0.. {
        let id = format!("s{i}-{n}");
        let body = format!("body of {id}, {}", "x".repeat(n % 200));
        let sent = client
            .send_with_id(Target::Peer(format!("r{i}")), id.clone(), "text/plain", text(&body))
            .await;
        let Ok(ack) = sent else { return };
        let len = {
            let mut acked = acked.lock().unwrap();
            acked.push(Acked {
                conversation: ack.conversation_id,
                seq: ack.seq,
                client_msg_id: id,
                body: body.into_bytes(),
            });
            acked.len()
        };
        count.send_replace(len);
    }
}

/// Reads every pair's conversation by sync (as its receiver) and looks for every ack.
async fn check(
    server: &TernProcess,
    key: &tern_gateway::TokenKey,
    acked: &[Acked],
    pairs: usize,
) -> Result<(), Loss> {
    let addr = server.client_addr().expect("tern serve announces client=");
    let mut stored: BTreeMap<(String, u64), (String, Vec<u8>)> = BTreeMap::new();
    for i in 0..pairs {
        let token = key.mint_for(&format!("r{i}"), "phone", now_secs(), 3600);
        let (reader, _events) = connect(addr, &token).await;
        let conversations: std::collections::BTreeSet<&str> = acked
            .iter()
            .filter(|a| a.client_msg_id.starts_with(&format!("s{i}-")))
            .map(|a| a.conversation.as_str())
            .collect();
        for conv in conversations {
            let mut from = 1;
            loop {
                let page = match reader.sync_page(conv, from, 500).await {
                    Ok(page) => page,
                    Err(e) => {
                        // What is not read counts as lost, and the error says why.
                        eprintln!("sync of {conv} from {from} failed: {e}");
                        break;
                    }
                };
                for m in page.messages {
                    stored.insert((conv.to_owned(), m.seq), (m.client_msg_id, m.body.to_vec()));
                }
                if !page.has_more {
                    break;
                }
                from = page.next_from_seq;
            }
        }
        reader.close().await;
    }
    let mut loss = Loss { missing: Vec::new(), changed: Vec::new(), acked: acked.len() };
    for a in acked {
        match stored.get(&(a.conversation.clone(), a.seq)) {
            None => loss.missing.push(a.clone()),
            Some((id, _)) if *id != a.client_msg_id => {
                loss.changed.push((a.clone(), format!("{id} is stored there")))
            }
            Some((_, body)) if *body != a.body => {
                loss.changed.push((a.clone(), "with another body".to_owned()))
            }
            Some(_) => {}
        }
    }
    if loss.missing.is_empty() && loss.changed.is_empty() { Ok(()) } else { Err(loss) }
}
