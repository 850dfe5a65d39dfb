//! Device records on Redis: one hash per user, `<user base>:dev`, with four fields per device
//! (`<attr>:<device_id>`; the attribute is one letter before the first `:`, so any device id
//! parses back):
//!
//! | field | value |
//! |---|---|
//! | `p:<device>` | platform (wire number) |
//! | `s:<device>` | last check-in, Unix ms (only moves forward) |
//! | `r:<device>` | logout fence, Unix ms (only moves forward) |
//! | `k:<device>` | push registration: a protobuf `DeviceRecordProto` with only its push fields |
//!
//! Each write is one script ([`DEVICE_WRITE_LUA`]: the max rules run inside Redis, so
//! concurrent writers lose nothing) answered with the device's fields after it; with
//! `appendfsync always` the reply comes after the AOF fsync, as for appends. A user's list is
//! one `HGETALL`; the push registrations of many users one pipeline of `HGETALL`s.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prost::Message as _;
use redis::Script;
use tern_store::device::DeviceRecordProto;
use tern_store::{DeviceRecord, DeviceWrite, Platform};

use crate::error::RedisStoreError;
use crate::store::RedisStore;

/// KEYS[1] = the user's device hash; ARGV = device, op, args. Ops: `c` check-in (platform,
/// now), `k` set push (blob), `x` clear push, `r` revoke (fence). Returns the device's
/// [p, s, r, k] after the write.
pub const DEVICE_WRITE_LUA: &str = r#"
local key, dev, op = KEYS[1], ARGV[1], ARGV[2]
local function raise(field, v)
  local cur = tonumber(redis.call('HGET', key, field) or '0') or 0
  if tonumber(v) > cur then redis.call('HSET', key, field, v) end
end
if op == 'c' then
  redis.call('HSET', key, 'p:' .. dev, ARGV[3])
  raise('s:' .. dev, ARGV[4])
elseif op == 'k' then
  redis.call('HSET', key, 'k:' .. dev, ARGV[3])
elseif op == 'x' then
  redis.call('HDEL', key, 'k:' .. dev)
elseif op == 'r' then
  redis.call('HDEL', key, 'k:' .. dev)
  raise('r:' .. dev, ARGV[3])
  if redis.call('HEXISTS', key, 'p:' .. dev) == 0 then
    redis.call('HSET', key, 'p:' .. dev, '0')
  end
else
  return redis.error_reply('unknown device op')
end
return redis.call('HMGET', key, 'p:' .. dev, 's:' .. dev, 'r:' .. dev, 'k:' .. dev)
"#;

/// [`DEVICE_WRITE_LUA`].
pub static DEVICE_WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(DEVICE_WRITE_LUA));

/// The stored form of a push registration (only its push fields).
fn push_blob(r: &DeviceRecord) -> Vec<u8> {
    let mut p = DeviceRecordProto::of(r);
    p.device_id.clear();
    p.platform = 0;
    p.last_seen_ms = 0;
    p.revoked_before_ms = 0;
    p.encode_to_vec()
}

/// A record from its four fields (any may be missing).
fn record(
    device_id: &str,
    p: Option<&[u8]>,
    s: Option<&[u8]>,
    r: Option<&[u8]>,
    k: Option<&[u8]>,
    key: &str,
) -> Result<DeviceRecord, RedisStoreError> {
    let corrupt = |what: String| RedisStoreError::Corrupt { key: key.to_owned(), what };
    let number = |v: Option<&[u8]>, name: &str| -> Result<i64, RedisStoreError> {
        match v {
            None => Ok(0),
            Some(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt(format!("{name} of {device_id} is not a number"))),
        }
    };
    let platform = Platform::from_wire(i32::try_from(number(p, "platform")?).unwrap_or(0));
    let mut proto = match k {
        Some(b) => DeviceRecordProto::decode(b)
            .map_err(|e| corrupt(format!("push registration of {device_id}: {e}")))?,
        None => DeviceRecordProto::default(),
    };
    proto.device_id = device_id.to_owned();
    proto.platform = platform.to_wire();
    proto.last_seen_ms = number(s, "last seen")?;
    proto.revoked_before_ms = number(r, "fence")?;
    Ok(proto.to_record())
}

/// Every device of one user's hash (`HGETALL` pairs), in device id order.
fn parse_hash(
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    key: &str,
) -> Result<Vec<DeviceRecord>, RedisStoreError> {
    type Fields = [Option<Vec<u8>>; 4];
    let mut by_device: BTreeMap<String, Fields> = BTreeMap::new();
    for (field, value) in pairs {
        let field = String::from_utf8(field).map_err(|_| RedisStoreError::Corrupt {
            key: key.to_owned(),
            what: "a field that is not UTF-8".into(),
        })?;
        let Some((attr, device)) = field.split_once(':') else { continue };
        let slot = match attr {
            "p" => 0,
            "s" => 1,
            "r" => 2,
            "k" => 3,
            _ => continue,
        };
        by_device.entry(device.to_owned()).or_default()[slot] = Some(value);
    }
    by_device
        .iter()
        .map(|(d, [p, s, r, k])| {
            record(d, p.as_deref(), s.as_deref(), r.as_deref(), k.as_deref(), key)
        })
        .collect()
}

impl RedisStore {
    fn device_key(&self, user_id: &str) -> String {
        format!("{}:dev", self.keys.user(user_id))
    }

    /// [`tern_store::Store::device_write`].
    pub(crate) async fn write_device(
        &self,
        user_id: &str,
        device_id: &str,
        write: &DeviceWrite,
    ) -> Result<DeviceRecord, RedisStoreError> {
        let key = self.device_key(user_id);
        let mut inv = DEVICE_WRITE.prepare_invoke();
        inv.key(&key).arg(device_id);
        match write {
            DeviceWrite::CheckIn { platform, now_ms } => {
                inv.arg("c").arg(platform.to_wire()).arg(*now_ms);
            }
            DeviceWrite::SetPush(p) => {
                let r = DeviceRecord { push: Some(p.clone()), ..Default::default() };
                inv.arg("k").arg(push_blob(&r));
            }
            DeviceWrite::ClearPush => {
                inv.arg("x");
            }
            DeviceWrite::Revoke { before_ms } => {
                inv.arg("r").arg(*before_ms);
            }
        }
        let fields: Vec<Option<Vec<u8>>> =
            self.run(|mut conn| async move { Ok(inv.invoke_async(&mut conn).await?) }).await?;
        let [p, s, r, k] = <[Option<Vec<u8>>; 4]>::try_from(fields).map_err(|_| {
            RedisStoreError::Corrupt { key: key.clone(), what: "device script answer".into() }
        })?;
        record(device_id, p.as_deref(), s.as_deref(), r.as_deref(), k.as_deref(), &key)
    }

    /// [`tern_store::Store::devices`].
    pub(crate) async fn user_devices(
        &self,
        user_id: &str,
    ) -> Result<Vec<DeviceRecord>, RedisStoreError> {
        let key = self.device_key(user_id);
        let k = key.clone();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HGETALL").arg(&k).query_async(&mut conn).await?)
            })
            .await?;
        parse_hash(pairs, &key)
    }

    /// [`tern_store::Store::device`].
    pub(crate) async fn one_device(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<DeviceRecord>, RedisStoreError> {
        let key = self.device_key(user_id);
        let fields: Vec<String> =
            ["p", "s", "r", "k"].iter().map(|a| format!("{a}:{device_id}")).collect();
        let k = key.clone();
        let values: Vec<Option<Vec<u8>>> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HMGET").arg(&k).arg(&fields[..]).query_async(&mut conn).await?)
            })
            .await?;
        let [p, s, r, kk] = <[Option<Vec<u8>>; 4]>::try_from(values)
            .map_err(|_| RedisStoreError::Corrupt { key: key.clone(), what: "HMGET".into() })?;
        if p.is_none() && s.is_none() && r.is_none() && kk.is_none() {
            return Ok(None);
        }
        record(device_id, p.as_deref(), s.as_deref(), r.as_deref(), kk.as_deref(), &key).map(Some)
    }

    /// [`tern_store::Store::push_registrations`]: one pipeline of `HGETALL`s.
    pub(crate) async fn registrations(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, DeviceRecord)>, RedisStoreError> {
        let mut users: Vec<&String> = Vec::with_capacity(user_ids.len());
        for u in user_ids {
            if !users.contains(&u) {
                users.push(u);
            }
        }
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|u| self.device_key(u)).collect();
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("HGETALL").arg(k);
        }
        let hashes: Vec<Vec<(Vec<u8>, Vec<u8>)>> =
            self.run(|mut conn| async move { Ok(pipe.query_async(&mut conn).await?) }).await?;
        let mut out = Vec::new();
        for ((user, key), pairs) in users.iter().zip(&keys).zip(hashes) {
            for d in parse_hash(pairs, key)? {
                if d.push.is_some() {
                    out.push(((*user).clone(), d));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use tern_store::{PushProvider, PushRegistration};

    use super::*;

    #[test]
    fn fields_parse_back_to_records_and_garbage_is_corrupt() {
        let push = PushRegistration {
            provider: PushProvider::Fcm,
            token: "tok".into(),
            app_id: "proj".into(),
            sandbox: false,
            registered_ms: 7,
        };
        let full = DeviceRecord { push: Some(push.clone()), ..Default::default() };
        let pairs = vec![
            (b"p:ph:one".to_vec(), b"2".to_vec()),
            (b"s:ph:one".to_vec(), b"100".to_vec()),
            (b"k:ph:one".to_vec(), push_blob(&full)),
            (b"r:a".to_vec(), b"50".to_vec()),
            (b"p:a".to_vec(), b"0".to_vec()),
            (b"zz".to_vec(), b"ignored".to_vec()),
        ];
        let list = parse_hash(pairs, "k").expect("parses");
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].device_id.as_str(), list[0].revoked_before_ms), ("a", 50));
        assert_eq!(list[1].device_id, "ph:one", "a device id with ':' parses back");
        assert_eq!((list[1].platform, list[1].last_seen_ms), (Platform::Android, 100));
        assert_eq!(list[1].push, Some(push));
        assert!(parse_hash(vec![(b"s:x".to_vec(), b"nan".to_vec())], "k").is_err());
        assert!(parse_hash(vec![(b"k:x".to_vec(), vec![0xff, 0xff])], "k").is_err());
    }
}
