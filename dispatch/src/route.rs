//! Routing deliveries in the distributed mode: look the recipients up in Redis presence (one
//! pipelined round trip per batch) and send each gateway one Push per message with the users it
//! holds, all of a round's Pushes for one gateway handed to its link as ONE buffer (one queue
//! item, so one link write, whatever the number of messages). Pushing never blocks dispatch:
//! jobs wait in a bounded queue, and what cannot be routed (queue full, presence down, gateway
//! not linked) is dropped and counted; clients recover by sync.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use tern_presence::Presence;
use tern_proto::link::v1::{self as link, link_frame::Body as LinkBody};
use tokio::sync::mpsc;

use crate::link::Links;
use crate::push::{ConnRef, Pusher};

/// Pushes waiting for routing; past it pushes are dropped.
const ROUTE_QUEUE: usize = 65_536;
/// Most pushes routed per presence round trip.
const ROUTE_BATCH: usize = 1024;
/// How long pushes wait for presence Redis to come back before they are dropped.
const LOOKUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

struct Job {
    user: String,
    frame: Bytes,
    skip: Option<ConnRef>,
}

/// Router counters.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Pushes dropped because the routing queue was full.
    pub queue_full: AtomicU64,
    /// Presence lookups that failed (their pushes were dropped).
    pub lookup_errors: AtomicU64,
    /// Push frames sent to gateways.
    pub pushes_sent: AtomicU64,
    /// Buffers handed to gateway links: one per (routing round, gateway).
    pub link_batches: AtomicU64,
}

impl RouteMetrics {
    /// Appends the router counters in Prometheus text format; `links_dropped` is the links'
    /// count of pushes they could not take.
    pub fn render(&self, links_dropped: u64, out: &mut String) {
        use std::fmt::Write;
        let rows = [
            (
                "tern_dispatch_route_queue_full_total",
                "Pushes dropped: routing queue full.",
                self.queue_full.load(Relaxed),
            ),
            (
                "tern_dispatch_route_lookup_errors_total",
                "Presence lookups that failed (their pushes dropped).",
                self.lookup_errors.load(Relaxed),
            ),
            (
                "tern_dispatch_route_pushes_sent_total",
                "Push frames sent to gateways.",
                self.pushes_sent.load(Relaxed),
            ),
            (
                "tern_dispatch_route_link_batches_total",
                "Push batches handed to gateway links (one per routing round and gateway).",
                self.link_batches.load(Relaxed),
            ),
            (
                "tern_dispatch_route_pushes_unlinked_total",
                "Push frames dropped: gateway not linked or its link full.",
                links_dropped,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}
# TYPE {name} counter
{name} {v}"
            );
        }
    }
}

/// The distributed-mode [`Pusher`].
pub struct Router {
    tx: mpsc::Sender<Job>,
    /// Counters.
    pub metrics: Arc<RouteMetrics>,
}

impl Router {
    /// Starts the routing task on the current runtime.
    pub fn start(presence: Presence, links: Arc<Links>) -> Self {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let metrics = Arc::new(RouteMetrics::default());
        tokio::spawn(run(rx, presence, links, metrics.clone()));
        Self { tx, metrics }
    }
}

impl Pusher for Router {
    fn push(&self, user_id: &str, frame: &Bytes, skip: Option<&ConnRef>) {
        let job = Job { user: user_id.to_owned(), frame: frame.clone(), skip: skip.cloned() };
        if self.tx.try_send(job).is_err() {
            self.metrics.queue_full.fetch_add(1, Relaxed);
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    presence: Presence,
    links: Arc<Links>,
    m: Arc<RouteMetrics>,
) {
    let mut jobs = Vec::with_capacity(ROUTE_BATCH);
    while rx.recv_many(&mut jobs, ROUTE_BATCH).await > 0 {
        let mut users: Vec<String> = jobs.iter().map(|j| j.user.clone()).collect();
        users.sort_unstable();
        users.dedup();
        // Presence down (a restart): retry for a while instead of dropping at once; pushes
        // queue meanwhile (bounded), and flow again when Redis is back.
        let give_up = tokio::time::Instant::now() + LOOKUP_PATIENCE;
        let located = loop {
            match presence.lookup(&users).await {
                Ok(l) => break Some(l),
                Err(e) => {
                    m.lookup_errors.fetch_add(1, Relaxed);
                    if tokio::time::Instant::now() >= give_up {
                        tracing::warn!(error = %e, dropped = jobs.len(), "presence unavailable; pushes dropped");
                        break None;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        };
        let Some(located) = located else {
            jobs.clear();
            continue;
        };
        let where_is: HashMap<&str, &Vec<tern_presence::Location>> =
            users.iter().map(String::as_str).zip(located.iter()).collect();
        for batch in plan(&jobs, &where_is) {
            if links.try_send_frames(&batch.gateway_id, batch.frames.freeze(), batch.count) {
                m.pushes_sent.fetch_add(batch.count as u64, Relaxed);
                m.link_batches.fetch_add(1, Relaxed);
            }
        }
        jobs.clear();
    }
}

/// Every Push frame of one round for one gateway, encoded back to back in plan order.
struct GatewayBatch {
    gateway_id: String,
    frames: BytesMut,
    count: usize,
}

/// Groups jobs into one Push per (message frame, gateway), in job order, so each gateway gets
/// each message once with every local recipient listed, and concatenates each gateway's Pushes
/// (gateways in first-seen order; a recipient's messages in job order).
fn plan(
    jobs: &[Job],
    where_is: &HashMap<&str, &Vec<tern_presence::Location>>,
) -> Vec<GatewayBatch> {
    // (frame pointer, gateway) -> targets, keeping first-seen order.
    let mut order: Vec<(usize, String)> = Vec::new();
    let mut targets: HashMap<(usize, String), (Bytes, Vec<link::PushTarget>)> = HashMap::new();
    for job in jobs {
        let Some(locations) = where_is.get(job.user.as_str()) else { continue };
        let mut gateways: Vec<&str> = locations.iter().map(|l| l.gateway_id.as_str()).collect();
        gateways.sort_unstable();
        gateways.dedup();
        for gw in gateways {
            let key = (job.frame.as_ptr() as usize, gw.to_owned());
            let skip_connection =
                job.skip.as_ref().filter(|s| s.gateway_id == gw).map_or(0, |s| s.connection_id);
            let entry = targets.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                (job.frame.clone(), Vec::new())
            });
            entry.1.push(link::PushTarget { user_id: job.user.clone(), skip_connection });
        }
    }
    let mut batches: Vec<GatewayBatch> = Vec::new();
    for key in order {
        let Some((frame, targets)) = targets.remove(&key) else { continue };
        let gateway_id = key.1;
        let i = match batches.iter().position(|b| b.gateway_id == gateway_id) {
            Some(i) => i,
            None => {
                batches.push(GatewayBatch { gateway_id, frames: BytesMut::new(), count: 0 });
                batches.len() - 1
            }
        };
        let push =
            link::LinkFrame { id: 0, body: Some(LinkBody::Push(link::Push { targets, frame })) };
        // ok: a Push is far below u32::MAX bytes (its frame passed the client frame cap).
        if tern_proto::encode_frame(&push, usize::MAX, &mut batches[i].frames).is_ok() {
            batches[i].count += 1;
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_presence::Location;
    use tern_proto::FrameDecoder;

    fn loc(device: &str, gw: &str, conn: u64) -> Location {
        Location { device_id: device.into(), gateway_id: gw.into(), connection_id: conn }
    }

    /// (gateway, [(user, skip)], frame) of one planned push.
    type Decoded = (String, Vec<(String, u64)>, Bytes);

    /// Every Push of every gateway batch, in batch order, checking each batch's count.
    fn decode(batches: Vec<GatewayBatch>) -> Vec<Decoded> {
        let mut out = Vec::new();
        for b in batches {
            let mut buf = b.frames;
            let mut decoder = FrameDecoder::new(usize::MAX);
            let mut n = 0;
            while let Some(f) = decoder.decode_as::<link::LinkFrame>(&mut buf).unwrap() {
                let Some(LinkBody::Push(push)) = f.body else { panic!("not a push") };
                let t = push.targets.into_iter().map(|t| (t.user_id, t.skip_connection)).collect();
                out.push((b.gateway_id.clone(), t, push.frame));
                n += 1;
            }
            assert!(buf.is_empty(), "trailing bytes");
            assert_eq!(n, b.count);
        }
        out
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
            Job { user: "alice".into(), frame: m1.clone(), skip: skip.clone() },
            Job { user: "bob".into(), frame: m1.clone(), skip: skip.clone() },
            Job { user: "carol".into(), frame: m1.clone(), skip: skip.clone() },
            Job { user: "bob".into(), frame: m2.clone(), skip: None },
        ];
        let batches = plan(&jobs, &where_is);
        assert_eq!(batches.len(), 2, "one buffer per gateway");
        assert_eq!(
            decode(batches),
            vec![
                ("gw1".into(), vec![("alice".into(), 7), ("bob".into(), 7)], m1.clone()),
                ("gw1".into(), vec![("bob".into(), 0)], m2),
                ("gw2".into(), vec![("alice".into(), 0)], m1),
            ]
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
        // 40 messages, each to 3 users (some messages repeat a recipient's job order).
        let frames: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("message-{i}"))).collect();
        let mut jobs = Vec::new();
        let mut expected: HashMap<(String, String), Vec<Bytes>> = HashMap::new();
        for (i, f) in frames.iter().enumerate() {
            for r in [i % 12, (i * 5 + 1) % 12, (i * 7 + 3) % 12] {
                if jobs.iter().any(|j: &Job| j.user == users[r] && j.frame == *f) {
                    continue;
                }
                jobs.push(Job { user: users[r].clone(), frame: f.clone(), skip: None });
                for l in locations[r].iter() {
                    expected
                        .entry((l.gateway_id.clone(), users[r].clone()))
                        .or_default()
                        .push(f.clone());
                }
            }
        }
        let batches = plan(&jobs, &where_is);
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
}
