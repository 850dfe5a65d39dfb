//! The three designs behind one [`Design`] trait; each commit is durable when it returns.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use fjall::{Database as FjallDb, Keyspace, KeyspaceCreateOptions, PersistMode};
use prost::Message as _;
use redb::{Database, ReadableTable, TableDefinition};
use tern_proto::v1;
use tern_store::embedded::{EmbeddedConfig, EmbeddedStore};
use tern_store::{Committed, NewMessage, Store, Write};

use crate::{CONVERSATIONS, Design, Result};

// The old embedded store's tables (git show 9652581:store/src/embedded.rs).
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const CONV_META: TableDefinition<&str, (u64, i64)> = TableDefinition::new("conversation_meta");
const DEDUPE: TableDefinition<(&str, &str), (&str, u64, i64)> = TableDefinition::new("dedupe");
const USER_CONVS: TableDefinition<(&str, &str), (u64, i64)> =
    TableDefinition::new("user_conversations");
const RECEIPTS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("receipts");

pub fn open(name: &str, dir: &Path) -> Result<Box<dyn Design>> {
    Ok(match name {
        "redb-direct" => Box::new(RedbDirect::open(dir)?),
        "wal+index" => Box::new(WalIndex::open(dir)?),
        "fjall" => Box::new(Fjall::open(dir)?),
        _ => return Err(format!("unknown design {name}").into()),
    })
}

/// Index of `dm:a{i}:b{i}` (the bench's own conversation ids).
fn conv_index(conv: &str) -> usize {
    conv.strip_prefix("dm:a")
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn stored(m: &NewMessage, seq: u64) -> Vec<u8> {
    v1::Message {
        conversation_id: m.conversation_id.clone(),
        seq,
        sender_user_id: m.sender_user_id.clone(),
        sender_device_id: m.sender_device_id.clone(),
        client_msg_id: m.client_msg_id.clone(),
        server_time_ms: m.server_time_ms,
        kind: m.kind as i32,
        content_type: m.content_type.clone(),
        body: m.body.clone(),
        recalled_seq: m.recalled_seq,
        recalled: false,
    }
    .encode_to_vec()
}

/// (1) One redb write transaction per group, `Durability::Immediate` (the old code).
struct RedbDirect {
    db: Database,
    acked: Vec<u64>,
}

impl RedbDirect {
    fn open(dir: &Path) -> Result<Self> {
        let db = Database::builder().set_cache_size(64 << 20).create(dir.join("tern.redb"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(MESSAGES)?;
            txn.open_table(CONV_META)?;
            txn.open_table(DEDUPE)?;
            txn.open_table(USER_CONVS)?;
            txn.open_table(RECEIPTS)?;
        }
        txn.commit()?;
        Ok(Self { db, acked: vec![0; CONVERSATIONS] })
    }
}

impl Design for RedbDirect {
    fn name(&self) -> &'static str {
        "redb-direct"
    }

    fn commit(&mut self, batch: &[Write]) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut acked = Vec::new();
        {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut meta = txn.open_table(CONV_META)?;
            let mut dedupe = txn.open_table(DEDUPE)?;
            let mut index = txn.open_table(USER_CONVS)?;
            let mut receipts = txn.open_table(RECEIPTS)?;
            for w in batch {
                match w {
                    Write::Append(m) => {
                        let conv = m.conversation_id.as_str();
                        let key = (m.sender_user_id.as_str(), m.client_msg_id.as_str());
                        if dedupe.get(key)?.is_some() {
                            continue;
                        }
                        let seq = meta.get(conv)?.map_or(0, |g| g.value().0) + 1;
                        messages.insert((conv, seq), stored(m, seq).as_slice())?;
                        meta.insert(conv, (seq, m.server_time_ms))?;
                        dedupe.insert(key, (conv, seq, m.server_time_ms))?;
                        for member in &m.members {
                            index.insert((member.as_str(), conv), (seq, m.server_time_ms))?;
                        }
                        acked.push((conv_index(conv), seq));
                    }
                    Write::Watermark(r) => {
                        let key = (r.conversation_id.as_str(), r.user_id.as_str());
                        let (d, rd) = receipts.get(key)?.map_or((0, 0), |g| g.value());
                        if r.seq > d {
                            receipts.insert(key, (r.seq, rd))?;
                        }
                    }
                }
            }
        }
        txn.commit()?;
        for (c, s) in acked {
            self.acked[c] = s;
        }
        Ok(())
    }

    fn last_acked(&self, conv: usize) -> u64 {
        self.acked[conv]
    }
}

/// (2) tern-store's EmbeddedStore: log + fdatasync per group, redb index off the ack path.
struct WalIndex {
    store: EmbeddedStore,
    acked: Vec<u64>,
}

impl WalIndex {
    fn open(dir: &Path) -> Result<Self> {
        let store = EmbeddedStore::open_with(dir, &EmbeddedConfig::default())?;
        Ok(Self { store, acked: vec![0; CONVERSATIONS] })
    }
}

impl Design for WalIndex {
    fn name(&self) -> &'static str {
        "wal+index"
    }

    fn commit(&mut self, batch: &[Write]) -> Result<()> {
        let commit = self.store.blocking_commit().ok_or("no blocking commit")?;
        for c in commit.commit_now(batch)? {
            if let Committed::Appended(a) = c {
                self.acked[conv_index(&a.conversation_id)] = a.seq;
            }
        }
        Ok(())
    }

    fn last_acked(&self, conv: usize) -> u64 {
        self.acked[conv]
    }
}

/// (3) fjall: the same rows in five keyspaces, one write batch per group persisted with
/// `SyncData`. Dedupe and receipts are read from fjall; last seq from an in-memory map
/// (filled from fjall on a miss), as tern-store's writer keeps it.
struct Fjall {
    db: FjallDb,
    messages: Keyspace,
    meta: Keyspace,
    dedupe: Keyspace,
    index: Keyspace,
    receipts: Keyspace,
    last_seq: HashMap<String, u64>,
    acked: Vec<u64>,
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn two(a: u64, b: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&a.to_be_bytes());
    v[8..].copy_from_slice(&b.to_be_bytes());
    v
}

impl Fjall {
    fn open(dir: &Path) -> Result<Self> {
        let db = FjallDb::builder(dir.join("fjall")).cache_size(64 << 20).open()?;
        let ks = |n: &str| db.keyspace(n, KeyspaceCreateOptions::default);
        Ok(Self {
            messages: ks("messages")?,
            meta: ks("conversation_meta")?,
            dedupe: ks("dedupe")?,
            index: ks("user_conversations")?,
            receipts: ks("receipts")?,
            db,
            last_seq: HashMap::new(),
            acked: vec![0; CONVERSATIONS],
        })
    }

    fn seq_of(&mut self, conv: &str) -> Result<u64> {
        if let Some(s) = self.last_seq.get(conv) {
            return Ok(*s);
        }
        let s = match self.meta.get(conv)? {
            Some(v) => u64::from_be_bytes(v[..8].try_into()?),
            None => 0,
        };
        self.last_seq.insert(conv.to_owned(), s);
        Ok(s)
    }
}

impl Design for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn commit(&mut self, batch: &[Write]) -> Result<()> {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut seqs: HashMap<&str, u64> = HashMap::new();
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        for w in batch {
            match w {
                Write::Append(m) => {
                    let conv = m.conversation_id.as_str();
                    let key = (m.sender_user_id.as_str(), m.client_msg_id.as_str());
                    let dkey = pair(key.0, key.1);
                    if !seen.insert(key) || self.dedupe.get(&dkey)?.is_some() {
                        continue;
                    }
                    let last = match seqs.get(conv) {
                        Some(s) => *s,
                        None => self.seq_of(conv)?,
                    };
                    let seq = last + 1;
                    seqs.insert(conv, seq);
                    let t = m.server_time_ms as u64;
                    let mut mkey = Vec::with_capacity(conv.len() + 9);
                    mkey.extend_from_slice(conv.as_bytes());
                    mkey.push(0);
                    mkey.extend_from_slice(&seq.to_be_bytes());
                    b.insert(&self.messages, mkey, stored(m, seq));
                    b.insert(&self.meta, conv, two(seq, t).to_vec());
                    let mut dv = conv.as_bytes().to_vec();
                    dv.extend_from_slice(&two(seq, t));
                    b.insert(&self.dedupe, dkey, dv);
                    for member in &m.members {
                        b.insert(&self.index, pair(member, conv), two(seq, t).to_vec());
                    }
                }
                Write::Watermark(r) => {
                    let key = pair(&r.conversation_id, &r.user_id);
                    let (d, rd) = match self.receipts.get(&key)? {
                        Some(v) => (
                            u64::from_be_bytes(v[..8].try_into()?),
                            u64::from_be_bytes(v[8..16].try_into()?),
                        ),
                        None => (0, 0),
                    };
                    if r.seq > d {
                        b.insert(&self.receipts, key, two(r.seq, rd).to_vec());
                    }
                }
            }
        }
        b.commit()?;
        for (conv, seq) in seqs {
            self.acked[conv_index(conv)] = seq;
            if let Some(s) = self.last_seq.get_mut(conv) {
                *s = seq;
            }
        }
        Ok(())
    }

    fn last_acked(&self, conv: usize) -> u64 {
        self.acked[conv]
    }
}
