//! One routing round's plan: given where every recipient is connected, one Push per (message,
//! gateway) listing that gateway's recipients, and one buffer per gateway with its Pushes back
//! to back in job order. Pure: unit-tested without presence or links.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tern_presence::Location;

use crate::push::ConnRef;

/// The recipients of one job: a user, or many (a group's members, distinct).
#[derive(Debug, Clone)]
pub enum Users {
    /// One user.
    One(String),
    /// Many distinct users, shared with the membership cache.
    Many(Arc<[String]>),
}

impl Users {
    /// The recipients' ids.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many): (Option<&str>, &[String]) = match self {
            Users::One(u) => (Some(u.as_str()), &[]),
            Users::Many(m) => (None, m),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }

    /// How many recipients.
    pub fn count(&self) -> usize {
        match self {
            Users::One(_) => 1,
            Users::Many(m) => m.len(),
        }
    }
}

/// One message to route: its encoded client frame, its recipients, and the connection to skip.
#[derive(Debug)]
pub struct Job {
    /// Who gets it.
    pub users: Users,
    /// The encoded client frame (shared by every recipient).
    pub frame: Bytes,
    /// The connection that caused it (it has the answer already).
    pub skip: Option<ConnRef>,
}

/// Every Push frame of one round for one gateway, encoded back to back in job order.
#[derive(Debug)]
pub struct GatewayBatch {
    /// The gateway.
    pub gateway_id: String,
    /// The encoded link frames.
    pub frames: BytesMut,
    /// How many Push frames `frames` holds.
    pub count: usize,
    /// How many recipients they list.
    pub targets: usize,
}

/// Groups each job's recipients by gateway into one Push per (job, gateway), and concatenates
/// each gateway's Pushes (gateways in first-seen order; every gateway's Pushes in job order, so
/// a recipient gets its messages in job order). `where_is` gives a user's live locations; users
/// it does not know are offline.
///
/// The Push frames are written straight from the recipients' ids, in exactly the bytes prost
/// would write for the same `LinkFrame` (a test holds them equal): a 10,000-member group's
/// message costs no per-recipient allocation here.
pub fn plan<'a>(
    jobs: &'a [Job],
    where_is: impl Fn(&str) -> Option<&'a [Location]>,
) -> Vec<GatewayBatch> {
    let mut batches: Vec<GatewayBatch> = Vec::new();
    // The last gateway seen, and every gateway's batch index: most members of a group share
    // a few gateways, so the hash lookup is mostly skipped.
    let mut last: Option<(&str, usize)> = None;
    let mut index: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
    // Per job: (batch index, encoded targets, how many) of the gateways it reaches, in
    // first-seen order.
    let mut per_gateway: Vec<(usize, BytesMut, usize)> = Vec::new();
    for job in jobs {
        per_gateway.clear();
        for user in job.users.iter() {
            let Some(locations) = where_is(user) else { continue };
            for (i, l) in locations.iter().enumerate() {
                let gw = l.gateway_id.as_str();
                // A user with two devices on one gateway is listed there once.
                if locations[..i].iter().any(|o| o.gateway_id == gw) {
                    continue;
                }
                let b = match last {
                    Some((name, b)) if name == gw => b,
                    _ => {
                        let b = *index.entry(gw).or_insert_with(|| {
                            batches.push(GatewayBatch {
                                gateway_id: gw.to_owned(),
                                frames: BytesMut::new(),
                                count: 0,
                                targets: 0,
                            });
                            batches.len() - 1
                        });
                        last = Some((gw, b));
                        b
                    }
                };
                let skip =
                    job.skip.as_ref().filter(|s| s.gateway_id == gw).map_or(0, |s| s.connection_id);
                let slot = match per_gateway.iter().position(|(i, _, _)| *i == b) {
                    Some(slot) => slot,
                    None => {
                        per_gateway.push((b, BytesMut::new(), 0));
                        per_gateway.len() - 1
                    }
                };
                let (_, targets, n) = &mut per_gateway[slot];
                put_target(targets, user, skip);
                *n += 1;
            }
        }
        for (b, targets, n) in per_gateway.drain(..) {
            let batch = &mut batches[b];
            put_push(&mut batch.frames, &targets, &job.frame);
            batch.count += 1;
            batch.targets += n;
        }
    }
    batches
}

/// Appends one `PushTarget` as field 1 of a `Push` (what prost writes for it).
fn put_target(buf: &mut BytesMut, user: &str, skip: u64) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let user_len =
        if user.is_empty() { 0 } else { 1 + encoded_len_varint(user.len() as u64) + user.len() };
    let skip_len = if skip == 0 { 0 } else { 1 + encoded_len_varint(skip) };
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint((user_len + skip_len) as u64, buf);
    if !user.is_empty() {
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(user.len() as u64, buf);
        buf.put_slice(user.as_bytes());
    }
    if skip != 0 {
        encode_key(2, WireType::Varint, buf);
        encode_varint(skip, buf);
    }
}

/// Appends one link frame (length prefix, `LinkFrame { id: 0, body: Push { targets, frame } }`)
/// whose targets are already encoded.
fn put_push(buf: &mut BytesMut, targets: &[u8], frame: &[u8]) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let frame_len =
        if frame.is_empty() { 0 } else { 1 + encoded_len_varint(frame.len() as u64) + frame.len() };
    let push_len = targets.len() + frame_len;
    let link_len = 1 + encoded_len_varint(push_len as u64) + push_len;
    buf.reserve(tern_proto::LEN_PREFIX_BYTES + link_len);
    // ok: a Push is far below u32::MAX bytes (its frame passed the client frame cap).
    buf.put_u32(link_len as u32);
    encode_key(PUSH_FIELD, WireType::LengthDelimited, buf);
    encode_varint(push_len as u64, buf);
    buf.put_slice(targets);
    if !frame.is_empty() {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(frame.len() as u64, buf);
        buf.put_slice(frame);
    }
}

/// `LinkFrame.push`'s field number (`link.proto`).
const PUSH_FIELD: u32 = 14;

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::FrameDecoder;
    use tern_proto::link::v1::{self as link, link_frame::Body as LinkBody};

    fn loc(device: &str, gw: &str, conn: u64) -> Location {
        Location { device_id: device.into(), gateway_id: gw.into(), connection_id: conn }
    }

    /// (gateway, [(user, skip)], frame) of one planned push.
    type Decoded = (String, Vec<(String, u64)>, Bytes);

    /// Every Push of every gateway batch, in batch order, checking each batch's counts.
    fn decode(batches: Vec<GatewayBatch>) -> Vec<Decoded> {
        let mut out = Vec::new();
        for b in batches {
            let mut buf = b.frames;
            let mut decoder = FrameDecoder::new(usize::MAX);
            let (mut n, mut t) = (0, 0);
            while let Some(f) = decoder.decode_as::<link::LinkFrame>(&mut buf).unwrap() {
                let Some(LinkBody::Push(push)) = f.body else { panic!("not a push") };
                t += push.targets.len();
                let targets = push.targets.into_iter().map(|t| (t.user_id, t.skip_connection));
                out.push((b.gateway_id.clone(), targets.collect(), push.frame));
                n += 1;
            }
            assert!(buf.is_empty(), "trailing bytes");
            assert_eq!((n, t), (b.count, b.targets));
        }
        out
    }

    fn one(user: &str, frame: &Bytes, skip: Option<ConnRef>) -> Job {
        Job { users: Users::One(user.into()), frame: frame.clone(), skip }
    }

    #[test]
    fn one_push_per_message_and_gateway_with_skip_only_on_origin_gateway() {
        let m1 = Bytes::from_static(b"message-1");
        let m2 = Bytes::from_static(b"message-2");
        let alice = vec![loc("phone", "gw1", 7), loc("laptop", "gw2", 7)];
        let bob = vec![loc("phone", "gw1", 9)];
        let nobody = vec![];
        let where_is: HashMap<&str, &Vec<Location>> =
            [("alice", &alice), ("bob", &bob), ("carol", &nobody)].into_iter().collect();
        let skip = Some(ConnRef { gateway_id: "gw1".into(), connection_id: 7 });
        let jobs = vec![
            one("alice", &m1, skip.clone()),
            one("bob", &m1, skip.clone()),
            one("carol", &m1, skip.clone()),
            one("bob", &m2, None),
        ];
        let batches = plan(&jobs, |u| where_is.get(u).map(|l| l.as_slice()));
        assert_eq!(batches.len(), 2, "one buffer per gateway");
        assert_eq!(
            decode(batches),
            vec![
                ("gw1".into(), vec![("alice".into(), 7)], m1.clone()),
                ("gw1".into(), vec![("bob".into(), 7)], m1.clone()),
                ("gw1".into(), vec![("bob".into(), 0)], m2),
                ("gw2".into(), vec![("alice".into(), 0)], m1),
            ]
        );
    }

    /// A group message: one job listing every member; each gateway gets ONE Push with its
    /// local members (a member with two devices there listed once), offline members nowhere.
    #[test]
    fn a_group_message_is_one_push_per_gateway_listing_only_its_members() {
        let m = Bytes::from_static(b"group message");
        let members: Arc<[String]> = (0..9).map(|u| format!("u{u}")).collect();
        let locations: Vec<Vec<Location>> = (0..9)
            .map(|u| match u % 3 {
                0 => vec![loc("a", "gw1", u), loc("b", "gw1", u + 100)],
                1 => vec![loc("a", "gw2", u)],
                _ => vec![],
            })
            .collect();
        let where_is: HashMap<&str, &Vec<Location>> =
            members.iter().map(String::as_str).zip(locations.iter()).collect();
        let jobs = vec![Job { users: Users::Many(members.clone()), frame: m.clone(), skip: None }];
        let got = decode(plan(&jobs, |u| where_is.get(u).map(|l| l.as_slice())));
        let ids = |v: &[u64]| v.iter().map(|u| (format!("u{u}"), 0)).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![("gw1".into(), ids(&[0, 3, 6]), m.clone()), ("gw2".into(), ids(&[1, 4, 7]), m)]
        );
    }

    /// A round of many messages to users spread over three gateways: one buffer per gateway,
    /// and every recipient on every gateway it is connected to gets every message addressed to
    /// it exactly once, in job order.
    #[test]
    fn a_round_is_one_batch_per_gateway_with_every_push_once_in_order() {
        let gateways = ["gw1", "gw2", "gw3"];
        let users: Vec<String> = (0..12).map(|u| format!("u{u}")).collect();
        // User u is on gateways u % 3 and, for even u, (u + 1) % 3 as well.
        let locations: Vec<Vec<Location>> = (0..users.len())
            .map(|u| {
                let mut l = vec![loc("a", gateways[u % 3], u as u64 + 1)];
                if u % 2 == 0 {
                    l.push(loc("b", gateways[(u + 1) % 3], u as u64 + 100));
                }
                l
            })
            .collect();
        let where_is: HashMap<&str, &Vec<Location>> =
            users.iter().map(String::as_str).zip(locations.iter()).collect();
        // 40 messages, each to 3 users, as single jobs or as one job of many.
        let frames: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("message-{i}"))).collect();
        let mut jobs = Vec::new();
        let mut expected: HashMap<(String, String), Vec<Bytes>> = HashMap::new();
        for (i, f) in frames.iter().enumerate() {
            let mut to: Vec<String> = Vec::new();
            for r in [i % 12, (i * 5 + 1) % 12, (i * 7 + 3) % 12] {
                if to.contains(&users[r]) {
                    continue;
                }
                to.push(users[r].clone());
                for l in locations[r].iter() {
                    expected
                        .entry((l.gateway_id.clone(), users[r].clone()))
                        .or_default()
                        .push(f.clone());
                }
            }
            if i % 2 == 0 {
                jobs.extend(to.iter().map(|u| one(u, f, None)));
            } else {
                jobs.push(Job { users: Users::Many(to.into()), frame: f.clone(), skip: None });
            }
        }
        let batches = plan(&jobs, |u| where_is.get(u).map(|l| l.as_slice()));
        let mut names: Vec<&str> = batches.iter().map(|b| b.gateway_id.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, gateways, "exactly one buffer per gateway");
        let mut got: HashMap<(String, String), Vec<Bytes>> = HashMap::new();
        for (gw, targets, frame) in decode(batches) {
            for (user, skip) in targets {
                assert_eq!(skip, 0);
                got.entry((gw.clone(), user)).or_default().push(frame.clone());
            }
        }
        assert_eq!(got, expected);
    }

    /// The hand-written Push bytes are prost's, byte for byte: empty and long ids, skips of
    /// every varint length, empty and large frames.
    #[test]
    fn push_frames_are_exactly_what_prost_writes() {
        let long = "u".repeat(300);
        let cases: Vec<(Vec<(&str, u64)>, Bytes)> = vec![
            (vec![("alice", 0)], Bytes::from_static(b"frame")),
            (vec![("", 0), ("bob", 1), (&long, u64::MAX)], Bytes::from(vec![7u8; 70_000])),
            (vec![("carol", 300), ("dave", 1 << 35)], Bytes::new()),
            (vec![], Bytes::from_static(b"x")),
        ];
        for (targets, frame) in cases {
            let mut encoded = BytesMut::new();
            for (u, skip) in &targets {
                put_target(&mut encoded, u, *skip);
            }
            let mut ours = BytesMut::new();
            put_push(&mut ours, &encoded, &frame);
            let push = link::Push {
                targets: targets
                    .iter()
                    .map(|(u, s)| link::PushTarget { user_id: (*u).into(), skip_connection: *s })
                    .collect(),
                frame: frame.clone(),
            };
            let theirs = link::LinkFrame { id: 0, body: Some(LinkBody::Push(push)) };
            let mut want = BytesMut::new();
            tern_proto::encode_frame(&theirs, usize::MAX, &mut want).unwrap();
            assert_eq!(ours, want, "{targets:?}");
        }
    }
}
