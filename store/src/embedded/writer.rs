//! The commit path: one group of writes becomes log records, one log write and one
//! `fdatasync`, with no redb transaction on the way.
//!
//! The writer owns the log and the state a commit needs to decide seqs, dedupe and watermark
//! moves without the index: each conversation's last seq, the dedupe keys and the watermarks
//! written since the index last caught up (plus recently used ones as a cache). What it does
//! not hold it reads from the index, which is exact for every key the writer does not hold:
//! a key leaves the writer's maps only once the index has applied its last change
//! ([`Writer::housekeeping`]). A dedupe key the writer does not hold is looked up only if the
//! key filter ([`super::filter`]) says the index may hold it. A group's changes are staged and
//! enter the maps only after the log commit succeeds, so a failed commit changes nothing (and
//! poisons the log: the store then refuses writes until a restart recovers from what the disk
//! holds).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, TableDefinition};
use tern_proto::v1;

use super::entry::{self, GroupOp, IndexOp, MessageRef, WatermarkOp};
use super::filter::KeyFilter;
use super::tables::{
    self, CONV_META, DEDUPE, EmbeddedError, GROUP_MEMBERS, GROUP_PREFIX, GROUPS, RECEIPTS,
};
use crate::wal::Wal;
use crate::{
    Appended, Committed, GroupWrite, Member, MemberChange, NewMessage, Refusal, WatermarkUpdate,
    Watermarks, Write,
};

/// Entries the caches keep once the index holds them (beyond that, clean entries are dropped).
const CACHE_ENTRIES: usize = 100_000;

/// The writer's hash maps: foldhash with a random per-map seed (the keys come from clients,
/// so the seed keeps collisions unpredictable; SipHash cost more than the rest of a lookup).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn map<K, V>() -> Map<K, V> {
    Map::with_hasher(foldhash::fast::RandomState::default())
}

/// A map keyed by a pair of strings, stored as one byte string (the first one's length, then
/// both), looked up by `(&str, &str)` through a scratch buffer: no allocation per lookup, one
/// per entry.
struct PairMap<V> {
    map: Map<Box<[u8]>, V>,
    scratch: Vec<u8>,
}

impl<V> PairMap<V> {
    fn new() -> Self {
        Self { map: map(), scratch: Vec::new() }
    }

    fn key(&mut self, a: &str, b: &str) -> &[u8] {
        self.scratch.clear();
        self.scratch.extend_from_slice(&(a.len() as u64).to_le_bytes());
        self.scratch.extend_from_slice(a.as_bytes());
        self.scratch.extend_from_slice(b.as_bytes());
        &self.scratch
    }

    fn get(&mut self, a: &str, b: &str) -> Option<&V> {
        self.key(a, b);
        self.map.get(self.scratch.as_slice())
    }

    fn insert(&mut self, a: &str, b: &str, v: V) {
        self.key(a, b);
        match self.map.get_mut(self.scratch.as_slice()) {
            Some(slot) => *slot = v,
            None => {
                self.map.insert(self.scratch.as_slice().into(), v);
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn retain(&mut self, keep: impl Fn(&V) -> bool) {
        self.map.retain(|_, v| keep(v));
    }
}

/// A conversation's latest seq, and the lsn of its last change.
#[derive(Clone, Copy)]
struct Conv {
    last_seq: u64,
    lsn: u64,
}

/// Where a (sender, client_msg_id) went.
struct Dup {
    conversation_id: String,
    seq: u64,
    time: i64,
    lsn: u64,
}

/// A member's watermarks and the lsn of their last change (0: read from the index).
#[derive(Clone, Copy)]
struct Mark {
    watermarks: Watermarks,
    lsn: u64,
}

/// A group's version (0: no such group), whether it was dissolved, and the lsn of its last
/// change (0: read from the index).
#[derive(Clone, Copy)]
struct GroupMark {
    version: u64,
    dissolved: bool,
    lsn: u64,
}

/// A user's row in a group (`None`: never a member) and the lsn of its last change.
#[derive(Clone)]
struct MemberMark {
    row: Option<Member>,
    lsn: u64,
}

/// The writer's state, behind the store's commit mutex.
pub(crate) struct Writer {
    pub(crate) wal: Wal,
    convs: Map<String, Conv>,
    dedupe: PairMap<Dup>,
    /// Every dedupe key the index may hold (and more): a key outside it is new.
    known: KeyFilter,
    receipts: PairMap<Mark>,
    groups: Map<String, GroupMark>,
    members: PairMap<MemberMark>,
    /// The index's applied lsn at the last housekeeping.
    pruned_at: u64,
    /// Log records up to here were released.
    released: u64,
}

/// Several watermark writes of one (conversation, user) in a group.
struct MarkGroup {
    before: Watermarks,
    now: Watermarks,
    outcomes: Vec<usize>,
}

impl Writer {
    pub(crate) fn new(wal: Wal, known: KeyFilter) -> Self {
        Self {
            wal,
            convs: map(),
            dedupe: PairMap::new(),
            known,
            receipts: PairMap::new(),
            groups: map(),
            members: PairMap::new(),
            pruned_at: 0,
            released: 0,
        }
    }

    /// Drops what the index now holds from the writer's maps, and the log segments the index
    /// holds durably.
    pub(crate) fn housekeeping(&mut self, applied: u64, checkpointed: u64) {
        if applied > self.pruned_at {
            self.pruned_at = applied;
            if self.dedupe.len() > 0 {
                self.dedupe.retain(|d| d.lsn > applied);
            }
            if self.convs.len() > CACHE_ENTRIES {
                self.convs.retain(|_, c| c.lsn > applied);
            }
            if self.receipts.len() > CACHE_ENTRIES {
                self.receipts.retain(|m| m.lsn > applied);
            }
            if self.groups.len() > CACHE_ENTRIES {
                self.groups.retain(|_, g| g.lsn > applied);
            }
            if self.members.len() > CACHE_ENTRIES {
                self.members.retain(|m| m.lsn > applied);
            }
        }
        if checkpointed > self.released {
            match self.wal.release(checkpointed) {
                Ok(()) => self.released = checkpointed,
                Err(e) => tracing::warn!(error = %e, "releasing log segments failed"),
            }
        }
    }

    /// Commits `batch` to the log (see [`crate::Store::commit`]); `bounded`: refuse watermarks
    /// above the conversation's last seq. Returns the outcomes, the records for the index and
    /// the log's durable lsn.
    pub(crate) fn commit(
        &mut self,
        db: &Database,
        batch: &[Write],
        bounded: bool,
    ) -> Result<(Vec<Committed>, Vec<IndexOp>, u64), EmbeddedError> {
        let mut g = Group::new(db);
        let mut marks: Map<(&str, &str), MarkGroup> = map();
        let mut mark_order: Vec<(&str, &str)> = Vec::new();
        let mut out = Vec::with_capacity(batch.len());
        let mut ops = Vec::with_capacity(batch.len());
        for write in batch {
            match write {
                Write::Append(m) => {
                    let key = (m.sender_user_id.as_str(), m.client_msg_id.as_str());
                    if let Some(original) = self.original(&mut g, key, &out)? {
                        out.push(Committed::Appended(original));
                        continue;
                    }
                    let conv = m.conversation_id.as_str();
                    let mut group_version = 0;
                    if conv.starts_with(GROUP_PREFIX) {
                        match self.may_send(&mut g, conv, &m.sender_user_id)? {
                            Ok(version) => group_version = version,
                            Err(refusal) => {
                                out.push(Committed::Refused(refusal));
                                continue;
                            }
                        }
                    }
                    let seq = self.next_seq(&mut g, conv)?;
                    // Encoded once: the log copies the payload, the index keeps it.
                    let op = entry::encode_append(&MessageRef::new(m, seq), &m.members);
                    let lsn = self.wal.append_with(|buf| buf.extend_from_slice(op.payload()));
                    let time = m.server_time_ms;
                    g.convs.insert(conv, Conv { last_seq: seq, lsn });
                    g.dedupe.insert(key, (out.len(), lsn));
                    ops.push(IndexOp::Append(op));
                    out.push(Committed::Appended(Appended {
                        conversation_id: m.conversation_id.clone(),
                        seq,
                        server_time_ms: time,
                        duplicate: false,
                        group_version,
                    }));
                }
                Write::Group(change) => {
                    let m = &change.event;
                    let key = (m.sender_user_id.as_str(), m.client_msg_id.as_str());
                    if let Some(original) = self.original(&mut g, key, &out)? {
                        out.push(Committed::Appended(original));
                        continue;
                    }
                    let conv = m.conversation_id.as_str();
                    let seq = self.next_seq(&mut g, conv)?;
                    let op = match self.group_change(&mut g, change, seq)? {
                        Ok(op) => op,
                        Err(refusal) => {
                            out.push(Committed::Refused(refusal));
                            continue;
                        }
                    };
                    let lsn = self.wal.append_with(|buf| entry::encode_group(&op, buf));
                    g.convs.insert(conv, Conv { last_seq: seq, lsn });
                    g.dedupe.insert(key, (out.len(), lsn));
                    let dissolved = change.meta.dissolved;
                    g.groups.insert(conv, GroupMark { version: seq, dissolved, lsn });
                    for (change, row) in change.members.iter().zip(&op.members) {
                        let mark = MemberMark { row: Some(row.clone()), lsn };
                        g.members.insert((conv, change.user_id()), mark);
                    }
                    ops.push(IndexOp::Group(op));
                    out.push(Committed::Appended(Appended {
                        conversation_id: m.conversation_id.clone(),
                        seq,
                        server_time_ms: m.server_time_ms,
                        duplicate: false,
                        group_version: seq,
                    }));
                }
                Write::Flags(f) => {
                    self.wal.append_with(|buf| entry::encode_flags(f, buf));
                    ops.push(IndexOp::Flags(f.clone()));
                    out.push(Committed::Flagged);
                }
                Write::Watermark(w) => {
                    let conv = w.conversation_id.as_str();
                    if bounded {
                        let last_seq = self.conv(&mut g, conv)?.last_seq;
                        if w.seq > last_seq {
                            out.push(Committed::AboveLastSeq { last_seq });
                            continue;
                        }
                    }
                    let key = (conv, w.user_id.as_str());
                    let group = match marks.entry(key) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => {
                            let before = self.watermarks(&mut g, key)?;
                            mark_order.push(key);
                            e.insert(MarkGroup { before, now: before, outcomes: Vec::new() })
                        }
                    };
                    group.now = advance(group.now, w.kind, w.seq);
                    group.outcomes.push(out.len());
                    out.push(Committed::Watermark(WatermarkUpdate::default()));
                }
            }
        }
        // One record per moved watermark, with the group's final value.
        let mut moved_marks = Vec::new();
        for key in mark_order {
            let Some(group) = marks.get(&key) else { continue };
            let moved = group.now != group.before;
            if moved {
                let now = group.now;
                let lsn =
                    self.wal.append_with(|buf| entry::encode_watermark(key.0, key.1, now, buf));
                ops.push(IndexOp::Watermark(WatermarkOp {
                    conversation_id: key.0.to_owned(),
                    user_id: key.1.to_owned(),
                    watermarks: now,
                }));
                moved_marks.push((key, Mark { watermarks: now, lsn }));
            }
            for &i in &group.outcomes {
                out[i] = Committed::Watermark(WatermarkUpdate { watermarks: group.now, moved });
            }
        }
        let durable = self.wal.commit()?;
        // Durable: publish the group's changes to the writer's maps.
        for (conv, c) in g.convs {
            match self.convs.get_mut(conv) {
                Some(slot) => *slot = c,
                None => {
                    self.convs.insert(conv.to_owned(), c);
                }
            }
        }
        for ((sender, id), (i, lsn)) in g.dedupe {
            if let Some(Committed::Appended(a)) = out.get(i) {
                let dup = Dup {
                    conversation_id: a.conversation_id.clone(),
                    seq: a.seq,
                    time: a.server_time_ms,
                    lsn,
                };
                self.dedupe.insert(sender, id, dup);
                // Before the key can leave the map (housekeeping, once the index holds it).
                self.known.insert(sender, id);
            }
        }
        for ((conv, user), mark) in moved_marks {
            self.receipts.insert(conv, user, mark);
        }
        for (conv, mark) in g.groups {
            self.groups.insert(conv.to_owned(), mark);
        }
        for ((conv, user), mark) in g.members {
            self.members.insert(conv, user, mark);
        }
        Ok((out, ops, durable))
    }

    /// The seq the next message of `conv` gets.
    fn next_seq<'b>(&mut self, g: &mut Group<'_, 'b>, conv: &'b str) -> Result<u64, EmbeddedError> {
        let last = self.conv(g, conv)?.last_seq;
        last.checked_add(1).ok_or_else(|| EmbeddedError::SeqOverflow(conv.to_owned()))
    }

    /// Whether `user` may send to group `conv` now: its version if so.
    fn may_send<'b>(
        &mut self,
        g: &mut Group<'_, 'b>,
        conv: &'b str,
        user: &'b str,
    ) -> Result<Result<u64, Refusal>, EmbeddedError> {
        let group = self.group(g, conv)?;
        if group.version == 0 || group.dissolved {
            return Ok(Err(Refusal::NoSuchGroup));
        }
        let current = self.member(g, conv, user)?.is_some_and(|m| m.is_current());
        Ok(if current { Ok(group.version) } else { Err(Refusal::NotAMember) })
    }

    /// The index operation of a group change at `seq`, if the group is at the version the
    /// change expects and every row change applies to the row as it is.
    fn group_change<'b>(
        &mut self,
        g: &mut Group<'_, 'b>,
        change: &'b GroupWrite,
        seq: u64,
    ) -> Result<Result<GroupOp, Refusal>, EmbeddedError> {
        let m: &'b NewMessage = &change.event;
        let conv = m.conversation_id.as_str();
        let group = self.group(g, conv)?;
        if group.version != change.expect_version {
            return Ok(Err(Refusal::VersionConflict { version: group.version }));
        }
        if group.dissolved {
            return Ok(Err(Refusal::NoSuchGroup));
        }
        // A row change that does not fit the row (a role for a non-member, say) means the
        // change was computed from another state: the caller recomputes from the current one.
        let stale = Err(Refusal::VersionConflict { version: group.version });
        let mut rows = Vec::with_capacity(change.members.len());
        for c in &change.members {
            let before = self.member(g, conv, c.user_id())?.filter(Member::is_current);
            let row = match (c, before) {
                (MemberChange::Join { user_id, role, full_history }, None) => Member {
                    user_id: user_id.clone(),
                    role: *role,
                    joined_seq: seq,
                    visible_from: if *full_history { 1 } else { seq },
                    removed_seq: 0,
                },
                (MemberChange::SetRole { role, .. }, Some(b)) => Member { role: *role, ..b },
                (MemberChange::Remove { .. }, Some(b)) => Member { removed_seq: seq, ..b },
                _ => return Ok(stale),
            };
            rows.push(row);
        }
        let event = entry::encode_append(&MessageRef::new(m, seq), &[] as &[&str]);
        Ok(Ok(GroupOp { event, meta: change.meta.clone(), members: rows }))
    }

    /// A group's version and state: from this group commit, the writer's map, or the index.
    fn group<'b>(
        &mut self,
        g: &mut Group<'_, 'b>,
        conv: &'b str,
    ) -> Result<GroupMark, EmbeddedError> {
        if let Some(mark) = g.groups.get(conv) {
            return Ok(*mark);
        }
        if let Some(mark) = self.groups.get(conv) {
            return Ok(*mark);
        }
        let mark = match g.groups_table()?.get(conv)? {
            Some(v) => {
                let state = tables::group_of(conv, v.value())?;
                GroupMark { version: state.version, dissolved: state.meta.dissolved, lsn: 0 }
            }
            None => GroupMark { version: 0, dissolved: false, lsn: 0 },
        };
        self.groups.insert(conv.to_owned(), mark);
        Ok(mark)
    }

    /// A user's row in a group: from this group commit, the writer's map, or the index.
    fn member<'b>(
        &mut self,
        g: &mut Group<'_, 'b>,
        conv: &'b str,
        user: &'b str,
    ) -> Result<Option<Member>, EmbeddedError> {
        if let Some(mark) = g.members.get(&(conv, user)) {
            return Ok(mark.row.clone());
        }
        if let Some(mark) = self.members.get(conv, user) {
            return Ok(mark.row.clone());
        }
        let row = match g.members_table()?.get((conv, user))? {
            Some(v) => Some(tables::member_of(user, v.value())?),
            None => None,
        };
        self.members.insert(conv, user, MemberMark { row: row.clone(), lsn: 0 });
        Ok(row)
    }

    /// The original of a resend: earlier in this group, in the writer's map, or in the index.
    fn original(
        &mut self,
        g: &mut Group<'_, '_>,
        key: (&str, &str),
        out: &[Committed],
    ) -> Result<Option<Appended>, EmbeddedError> {
        if let Some(&(i, _)) = g.dedupe.get(&key)
            && let Some(Committed::Appended(a)) = out.get(i)
        {
            return Ok(Some(Appended { duplicate: true, group_version: 0, ..a.clone() }));
        }
        if let Some(d) = self.dedupe.get(key.0, key.1) {
            return Ok(Some(Appended {
                conversation_id: d.conversation_id.clone(),
                seq: d.seq,
                server_time_ms: d.time,
                duplicate: true,
                group_version: 0,
            }));
        }
        if !self.known.may_contain(key.0, key.1) {
            return Ok(None);
        }
        Ok(g.dedupe_table()?.get(key)?.map(|v| {
            let (conversation_id, seq, server_time_ms) = v.value();
            Appended {
                conversation_id: conversation_id.to_owned(),
                seq,
                server_time_ms,
                duplicate: true,
                group_version: 0,
            }
        }))
    }

    /// A conversation's latest seq: from this group, the writer's map, or the index.
    fn conv<'b>(&mut self, g: &mut Group<'_, 'b>, conv: &'b str) -> Result<Conv, EmbeddedError> {
        if let Some(c) = g.convs.get(conv) {
            return Ok(*c);
        }
        if let Some(c) = self.convs.get(conv) {
            return Ok(*c);
        }
        let last_seq = g.meta_table()?.get(conv)?.map_or(0, |v| v.value().0);
        let c = Conv { last_seq, lsn: 0 };
        // Cached: the index holds it, so lsn 0 lets housekeeping drop it when needed.
        match self.convs.entry(conv.to_owned()) {
            Entry::Occupied(e) => Ok(*e.get()),
            Entry::Vacant(e) => Ok(*e.insert(c)),
        }
    }

    /// A member's watermarks before this group: the writer's map or the index.
    fn watermarks(
        &mut self,
        g: &mut Group<'_, '_>,
        key: (&str, &str),
    ) -> Result<Watermarks, EmbeddedError> {
        if let Some(m) = self.receipts.get(key.0, key.1) {
            return Ok(m.watermarks);
        }
        let w = tables::read_watermarks(g.receipts_table()?, key.0, key.1)?;
        self.receipts.insert(key.0, key.1, Mark { watermarks: w, lsn: 0 });
        Ok(w)
    }
}

/// What one group stages before its log commit, and its lazily opened index snapshot.
struct Group<'d, 'b> {
    db: &'d Database,
    reader: Option<Reader>,
    convs: Map<&'b str, Conv>,
    /// (sender, client_msg_id) -> index of its outcome, and its lsn.
    dedupe: Map<(&'b str, &'b str), (usize, u64)>,
    groups: Map<&'b str, GroupMark>,
    members: Map<(&'b str, &'b str), MemberMark>,
}

type DedupeTable = ReadOnlyTable<(&'static str, &'static str), (&'static str, u64, i64)>;
type MetaTable = ReadOnlyTable<&'static str, (u64, i64)>;
type ReceiptsTable = ReadOnlyTable<(&'static str, &'static str), (u64, u64)>;
type GroupsTable = ReadOnlyTable<&'static str, &'static [u8]>;
type MembersTable = ReadOnlyTable<(&'static str, &'static str), (u64, u64, u64, u64)>;

/// An index snapshot and the tables opened in it (each once per group: opening one walks the
/// table tree).
struct Reader {
    txn: ReadTransaction,
    dedupe: Option<DedupeTable>,
    meta: Option<MetaTable>,
    receipts: Option<ReceiptsTable>,
    groups: Option<GroupsTable>,
    members: Option<MembersTable>,
}

impl<'d> Group<'d, '_> {
    fn new(db: &'d Database) -> Self {
        Self { db, reader: None, convs: map(), dedupe: map(), groups: map(), members: map() }
    }

    fn reader(&mut self) -> Result<&mut Reader, EmbeddedError> {
        if self.reader.is_none() {
            let txn = self.db.begin_read()?;
            self.reader = Some(Reader {
                txn,
                dedupe: None,
                meta: None,
                receipts: None,
                groups: None,
                members: None,
            });
        }
        self.reader.as_mut().ok_or_else(|| EmbeddedError::Probe("no read transaction".into()))
    }

    fn dedupe_table(&mut self) -> Result<&DedupeTable, EmbeddedError> {
        let r = self.reader()?;
        open(&r.txn, &mut r.dedupe, DEDUPE)
    }

    fn meta_table(&mut self) -> Result<&MetaTable, EmbeddedError> {
        let r = self.reader()?;
        open(&r.txn, &mut r.meta, CONV_META)
    }

    fn receipts_table(&mut self) -> Result<&ReceiptsTable, EmbeddedError> {
        let r = self.reader()?;
        open(&r.txn, &mut r.receipts, RECEIPTS)
    }

    fn groups_table(&mut self) -> Result<&GroupsTable, EmbeddedError> {
        let r = self.reader()?;
        open(&r.txn, &mut r.groups, GROUPS)
    }

    fn members_table(&mut self) -> Result<&MembersTable, EmbeddedError> {
        let r = self.reader()?;
        open(&r.txn, &mut r.members, GROUP_MEMBERS)
    }
}

/// `slot`'s table, opened in `txn` the first time.
fn open<'s, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    slot: &'s mut Option<ReadOnlyTable<K, V>>,
    def: TableDefinition<K, V>,
) -> Result<&'s ReadOnlyTable<K, V>, EmbeddedError> {
    if slot.is_none() {
        *slot = Some(txn.open_table(def)?);
    }
    slot.as_ref().ok_or_else(|| EmbeddedError::Probe("no table".into()))
}

/// `w` moved by a receipt of `kind` up to `seq` (never back; read also moves delivered).
fn advance(w: Watermarks, kind: v1::ReceiptKind, seq: u64) -> Watermarks {
    match kind {
        v1::ReceiptKind::Read => {
            let read = w.read.max(seq);
            Watermarks { delivered: w.delivered.max(read), read }
        }
        v1::ReceiptKind::Delivered => Watermarks { delivered: w.delivered.max(seq), read: w.read },
        v1::ReceiptKind::Unspecified => w,
    }
}
