//! Device records in the embedded store: written through the log like every other change
//! (one record per changed device, fsynced before the answer), applied to the `devices` index
//! table, read from it.
//!
//! Device writes do not ride the dispatch group commit (a login is not a conversation write);
//! they have a small group commit of their own instead: a caller queues its write and takes
//! the log's lock; whoever holds it takes every write queued by then, decides each from the
//! newest record (the rows written but not yet in the index, else the index), appends one log
//! record per changed device and syncs once. A login storm therefore costs one `fdatasync` per
//! batch of logins, not per login. A write that changes nothing (the same push token again)
//! writes nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use prost::Message as _;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::entry::{IndexOp, Record};
use super::tables::EmbeddedError;
use super::{EmbeddedStore, Inner};
use crate::device::{DeviceRecord, DeviceRecordProto, DeviceWrite};
use crate::{BoxFuture, StoreError};

/// (user_id, device_id) -> protobuf-encoded [`DeviceRecordProto`].
pub(super) const DEVICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("devices");

/// [`Record::device`]: a device's whole record after a write (absolute, so applying records in
/// lsn order is exact).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceLogRecord {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(message, optional, tag = "2")]
    pub record: Option<DeviceRecordProto>,
}

/// A device row for the index.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceOp {
    pub user_id: String,
    pub record: DeviceRecord,
}

/// Writes a device record.
pub(crate) fn encode_device(op: &DeviceOp, buf: &mut Vec<u8>) {
    let record = Record {
        device: Some(DeviceLogRecord {
            user_id: op.user_id.clone(),
            record: Some(DeviceRecordProto::of(&op.record)),
        }),
        ..Default::default()
    };
    buf.extend_from_slice(&record.encode_to_vec());
}

/// The index op of a decoded device record.
pub(crate) fn decode_device(r: DeviceLogRecord) -> Result<DeviceOp, String> {
    let record = r.record.ok_or("device record without its row")?.to_record();
    if r.user_id.is_empty() || record.device_id.is_empty() {
        return Err("device record without user or device".into());
    }
    Ok(DeviceOp { user_id: r.user_id, record })
}

/// Applies a device row inside an index transaction.
pub(super) fn apply(txn: &redb::WriteTransaction, op: &DeviceOp) -> Result<(), EmbeddedError> {
    let bytes = op.record.encode();
    txn.open_table(DEVICES)?
        .insert((op.user_id.as_str(), op.record.device_id.as_str()), bytes.as_slice())?;
    Ok(())
}

/// Device writes waiting for the log, and rows written but maybe not applied to the index yet.
#[derive(Default)]
pub(super) struct DeviceQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    next: u64,
    waiting: Vec<(u64, String, String, DeviceWrite)>,
    done: HashMap<u64, Result<DeviceRecord, StoreError>>,
    /// user -> device -> (newest row, the lsn that wrote it); dropped once the index has it.
    /// Reads overlay these on the index, so they never wait for the index to catch up (a
    /// login's read right after another login's write would otherwise force an index
    /// transaction per login).
    written: HashMap<String, HashMap<String, (DeviceRecord, u64)>>,
}

impl DeviceQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn row(db: &Database, user: &str, device: &str) -> Result<Option<DeviceRecord>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DEVICES)?;
    let Some(bytes) = table.get((user, device))? else { return Ok(None) };
    DeviceRecord::decode(bytes.value()).map(Some).map_err(|reason| EmbeddedError::Record {
        lsn: 0,
        reason: format!("devices/{user}/{device}: {reason}"),
    })
}

/// A copy of a batch-wide failure for every write of the batch.
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io(s) => StoreError::Io(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Refused(r) => StoreError::Refused(*r),
        StoreError::Unsupported(s) => StoreError::Unsupported(s),
    }
}

impl EmbeddedStore {
    /// Queues `write` and commits it, with whatever else is queued, unless an earlier caller
    /// committed it already (see the module doc).
    fn device_write_blocking(
        &self,
        user: String,
        device: String,
        write: DeviceWrite,
    ) -> Result<DeviceRecord, StoreError> {
        let inner = &*self.inner;
        let id = {
            let mut q = inner.devices.lock();
            q.next += 1;
            let id = q.next;
            q.waiting.push((id, user, device, write));
            id
        };
        let mut w = inner
            .writer
            .lock()
            .map_err(|_| StoreError::Unavailable("an earlier commit panicked".into()))?;
        let batch = {
            let mut q = inner.devices.lock();
            if let Some(done) = q.done.remove(&id) {
                return done;
            }
            let applied = inner.index.applied();
            q.written.retain(|_, rows| {
                rows.retain(|_, (_, lsn)| *lsn > applied);
                !rows.is_empty()
            });
            std::mem::take(&mut q.waiting)
        };
        let result = commit_batch(inner, &mut w.wal, batch);
        let mut q = inner.devices.lock();
        match result {
            Ok(outcomes) => {
                for (job, outcome, lsn) in outcomes {
                    if let Some(lsn) = lsn {
                        let rows = q.written.entry(job.1.clone()).or_default();
                        rows.insert(job.2.clone(), (outcome.clone(), lsn));
                    }
                    q.done.insert(job.0, Ok(outcome));
                }
            }
            Err((ids, e)) => {
                for i in ids {
                    q.done.insert(i, Err(copy(&e)));
                }
            }
        }
        q.done.remove(&id).unwrap_or_else(|| Err(StoreError::Corrupt("lost a device write".into())))
    }

    /// A device read on the blocking pool: `users`' rows written but not in the index yet
    /// (taken first), laid over the index's rows (read after), so an acknowledged write is
    /// never missed and the read does not wait for the index.
    fn device_read<T: Send + 'static>(
        &self,
        users: Vec<String>,
        f: impl FnOnce(&Database, &Pending) -> Result<T, EmbeddedError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        Box::pin(self.blocking(move |s| {
            let pending: Pending = {
                let q = s.inner.devices.lock();
                users
                    .iter()
                    .filter_map(|u| q.written.get(u).map(|r| (u.clone(), r.clone())))
                    .collect()
            };
            f(&s.inner.db, &pending).map_err(StoreError::from)
        }))
    }
}

type Job = (u64, String, String, DeviceWrite);
/// Rows written but maybe not in the index yet, of the users a read asked for.
type Pending = HashMap<String, HashMap<String, (DeviceRecord, u64)>>;

/// `user`'s index rows with the pending ones laid over, in device id order.
fn overlay(
    db: &Database,
    pending: &Pending,
    user: &str,
) -> Result<Vec<DeviceRecord>, EmbeddedError> {
    let mut rows = user_devices(db, user)?;
    if let Some(p) = pending.get(user) {
        for (device, (r, _)) in p {
            match rows.binary_search_by(|x| x.device_id.as_str().cmp(device)) {
                Ok(i) => rows[i] = r.clone(),
                Err(i) => rows.insert(i, r.clone()),
            }
        }
    }
    Ok(rows)
}
type Outcomes = Vec<(Job, DeviceRecord, Option<u64>)>;

/// Decides and logs one batch of device writes (the caller holds the log's lock), then hands
/// the changed rows to the index. Each outcome carries the lsn that wrote it (`None`: no
/// change). On failure, every id of the batch and the error.
fn commit_batch(
    inner: &Inner,
    wal: &mut crate::wal::Wal,
    batch: Vec<Job>,
) -> Result<Outcomes, (Vec<u64>, StoreError)> {
    let ids: Vec<u64> = batch.iter().map(|j| j.0).collect();
    let fail = |e: StoreError| (ids.clone(), e);
    // Newest rows: this batch's own earlier writes first, then the written-not-applied rows,
    // then the index.
    let mut newest: HashMap<(String, String), DeviceRecord> = HashMap::new();
    let mut changed = Vec::new();
    let mut out = Vec::with_capacity(batch.len());
    for job in batch {
        let key = (job.1.clone(), job.2.clone());
        let current = match newest.get(&key) {
            Some(r) => Some(r.clone()),
            None => {
                let q = inner.devices.lock();
                let written =
                    q.written.get(&job.1).and_then(|r| r.get(&job.2)).map(|r| r.0.clone());
                drop(q);
                match written {
                    Some(r) => Some(r),
                    None => row(&inner.db, &job.1, &job.2).map_err(|e| fail(e.into()))?,
                }
            }
        };
        let before = current.unwrap_or_else(|| DeviceRecord::new(&job.2));
        let after = before.apply(&job.3);
        // An unchanged row is not written again (a missing row that stays empty: not created).
        if after != before {
            let op = DeviceOp { user_id: job.1.clone(), record: after.clone() };
            wal.append_with(|buf| encode_device(&op, buf));
            changed.push((out.len(), op));
        }
        newest.insert(key, after.clone());
        out.push((job, after, None));
    }
    if changed.is_empty() {
        return Ok(out);
    }
    let durable = wal.commit().map_err(|e| fail(EmbeddedError::from(e).into()))?;
    let mut ops = Vec::with_capacity(changed.len());
    for (i, op) in changed {
        out[i].2 = Some(durable);
        ops.push(IndexOp::Device(op));
    }
    inner.index.push(ops, durable).map_err(|e| fail(e.into()))?;
    inner.durable.store(durable, Ordering::Release);
    Ok(out)
}

impl EmbeddedStore {
    pub(super) fn device_write_impl<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
        write: &'a DeviceWrite,
    ) -> BoxFuture<'a, Result<DeviceRecord, StoreError>> {
        let (user, device, write) = (user_id.to_owned(), device_id.to_owned(), write.clone());
        Box::pin(self.blocking(move |s| s.device_write_blocking(user, device, write)))
    }

    pub(super) fn device_impl<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceRecord>, StoreError>> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.device_read(vec![user.clone()], move |db, pending| {
            match pending.get(&user).and_then(|p| p.get(&device)) {
                Some((r, _)) => Ok(Some(r.clone())),
                None => row(db, &user, &device),
            }
        })
    }

    pub(super) fn devices_impl<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, StoreError>> {
        let user = user_id.to_owned();
        self.device_read(vec![user.clone()], move |db, pending| overlay(db, pending, &user))
    }

    pub(super) fn push_registrations_impl<'a>(
        &'a self,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, DeviceRecord)>, StoreError>> {
        let users = user_ids.to_vec();
        self.device_read(users.clone(), move |db, pending| {
            let mut out = Vec::new();
            for (i, u) in users.iter().enumerate() {
                if users[..i].contains(u) {
                    continue;
                }
                for d in overlay(db, pending, u)? {
                    if d.push.is_some() {
                        out.push((u.clone(), d));
                    }
                }
            }
            Ok(out)
        })
    }
}

/// Every device row of `user`, in device id order (one range scan of the user's prefix).
fn user_devices(db: &Database, user: &str) -> Result<Vec<DeviceRecord>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DEVICES)?;
    let mut out = Vec::new();
    for entry in table.range((user, "")..)? {
        let (key, value) = entry?;
        if key.value().0 != user {
            break;
        }
        let r = DeviceRecord::decode(value.value()).map_err(|reason| EmbeddedError::Record {
            lsn: 0,
            reason: format!("devices/{user}: {reason}"),
        })?;
        out.push(r);
    }
    Ok(out)
}
