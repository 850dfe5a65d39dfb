//! Device records on Scylla (`devices`: one partition per user, one row per device).
//!
//! Every write is a blind, idempotent upsert with `USING TIMESTAMP` = the time the value
//! describes (see `schema.cql`), so concurrent writers need no read and no lightweight
//! transaction: the latest check-in, the highest fence and the newest registration win in any
//! landing order. A write is answered with the row read back (LOCAL_QUORUM write then read:
//! it sees its own write). The push registrations of many users are read with one `SELECT`
//! per user partition, all in flight at once (one round trip of latency; a multi-partition
//! `IN` would put the fan-out on one coordinator instead).

use std::sync::Arc;

use prost::Message as _;
use scylla::DeserializeRow;
use tern_store::device::DeviceRecordProto;
use tern_store::{DeviceRecord, DeviceWrite, Platform};
use tokio::task::JoinSet;

use crate::error::OpError;
use crate::row::RowError;
use crate::statements::Stmt;
use crate::store::Inner;

/// A row of `SELECT device_id, platform, last_seen_ms, revoked_before_ms, push FROM devices`.
#[derive(Debug, Clone, PartialEq, DeserializeRow)]
pub(crate) struct DeviceRow {
    pub device_id: String,
    pub platform: Option<i32>,
    pub last_seen_ms: Option<i64>,
    pub revoked_before_ms: Option<i64>,
    pub push: Option<Vec<u8>>,
}

impl DeviceRow {
    /// The record this row holds.
    pub(crate) fn to_record(&self) -> Result<DeviceRecord, RowError> {
        let mut p = match &self.push {
            Some(b) => DeviceRecordProto::decode(b.as_slice()).map_err(|e| RowError::Group {
                what: "device push registration",
                reason: e.to_string(),
            })?,
            None => DeviceRecordProto::default(),
        };
        p.device_id.clone_from(&self.device_id);
        p.platform = Platform::from_wire(self.platform.unwrap_or(0)).to_wire();
        p.last_seen_ms = self.last_seen_ms.unwrap_or(0);
        p.revoked_before_ms = self.revoked_before_ms.unwrap_or(0);
        Ok(p.to_record())
    }
}

/// The `push` column of a registration: a record with only its push fields.
pub(crate) fn push_blob(write: &tern_store::PushRegistration) -> Vec<u8> {
    let r = DeviceRecord { push: Some(write.clone()), ..Default::default() };
    let mut p = DeviceRecordProto::of(&r);
    p.device_id.clear();
    p.encode_to_vec()
}

/// A write timestamp (µs) for a time in ms (clamped at 0).
fn micros(ms: i64) -> i64 {
    ms.max(0).saturating_mul(1000)
}

impl Inner {
    /// [`tern_store::Store::device_write`].
    pub(crate) async fn device_write(
        &self,
        user: &str,
        device: &str,
        write: &DeviceWrite,
    ) -> Result<DeviceRecord, OpError> {
        match write {
            DeviceWrite::CheckIn { platform, now_ms } => {
                let values = (micros(*now_ms), platform.to_wire(), *now_ms, user, device);
                self.exec(Stmt::CheckInDevice, values).await?;
            }
            DeviceWrite::SetPush(p) => {
                let values = (micros(p.registered_ms), push_blob(p), user, device);
                self.exec(Stmt::SetDevicePush, values).await?;
            }
            DeviceWrite::ClearPush => {
                let now = crate::store::now_ms();
                self.exec(Stmt::ClearDevicePush, (micros(now), user, device)).await?;
            }
            DeviceWrite::Revoke { before_ms } => {
                let at = micros(*before_ms);
                self.exec(Stmt::FenceDevice, (at, *before_ms, user, device)).await?;
                self.exec(Stmt::ClearDevicePush, (at, user, device)).await?;
            }
        }
        let row = self.device(user, device).await?;
        Ok(row.unwrap_or_else(|| DeviceRecord::new(device)))
    }

    /// [`tern_store::Store::device`].
    pub(crate) async fn device(
        &self,
        user: &str,
        device: &str,
    ) -> Result<Option<DeviceRecord>, OpError> {
        let row = self.select_one::<DeviceRow>(Stmt::SelectDevice, (user, device)).await?;
        Ok(row.map(|r| r.to_record()).transpose()?)
    }

    /// [`tern_store::Store::devices`].
    pub(crate) async fn devices(&self, user: &str) -> Result<Vec<DeviceRecord>, OpError> {
        let rows: Vec<DeviceRow> = self.select_all(Stmt::SelectDevices, (user,)).await?;
        Ok(rows.iter().map(DeviceRow::to_record).collect::<Result<_, _>>()?)
    }

    /// [`tern_store::Store::push_registrations`]: every user's partition read at once.
    pub(crate) async fn push_registrations(
        self: &Arc<Self>,
        users: &[String],
    ) -> Result<Vec<(String, DeviceRecord)>, OpError> {
        let mut unique: Vec<String> = Vec::with_capacity(users.len());
        for u in users {
            if !unique.contains(u) {
                unique.push(u.clone());
            }
        }
        let mut reads = JoinSet::new();
        for (i, u) in unique.iter().enumerate() {
            let (inner, u) = (Arc::clone(self), u.clone());
            reads.spawn(async move { (i, inner.devices(&u).await) });
        }
        let mut per_user: Vec<Vec<DeviceRecord>> = vec![Vec::new(); unique.len()];
        while let Some(done) = reads.join_next().await {
            let (i, devices) = done.map_err(|e| OpError::Task(e.to_string()))?;
            per_user[i] = devices?;
        }
        let mut out = Vec::new();
        for (u, devices) in unique.into_iter().zip(per_user) {
            out.extend(devices.into_iter().filter(|d| d.push.is_some()).map(|d| (u.clone(), d)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use tern_store::{PushProvider, PushRegistration};

    use super::*;

    #[test]
    fn rows_map_to_records() {
        let push = PushRegistration {
            provider: PushProvider::Apns,
            token: "t".into(),
            app_id: "com.x".into(),
            sandbox: true,
            registered_ms: 42,
        };
        let row = DeviceRow {
            device_id: "phone".into(),
            platform: Some(Platform::Ios.to_wire()),
            last_seen_ms: Some(100),
            revoked_before_ms: None,
            push: Some(push_blob(&push)),
        };
        let r = row.to_record().expect("maps");
        assert_eq!(
            (r.device_id.as_str(), r.platform, r.last_seen_ms),
            ("phone", Platform::Ios, 100)
        );
        assert_eq!((r.push, r.revoked_before_ms), (Some(push), 0));
        let empty = DeviceRow { platform: None, push: None, last_seen_ms: None, ..row.clone() };
        assert_eq!(empty.to_record().expect("maps"), DeviceRecord::new("phone"));
        let bad = DeviceRow { push: Some(vec![0xff, 0xff]), ..row };
        assert!(bad.to_record().is_err());
        assert_eq!((micros(-5), micros(2)), (0, 2000));
    }
}
