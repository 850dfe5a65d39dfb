//! Authenticated gateway <-> worker links, with real `tern gateway` / `tern dispatch` processes
//! (`tern_testkit::cluster`) and raw TCP peers: a process that reaches a worker's link port
//! without the cluster secret cannot act as a gateway, a "worker" registered in presence that
//! does not know the secret (or relays a real worker) never gets a request, and nodes with
//! different secrets refuse each other, on both sides, with a log line and a metric.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{WAIT, connect, next_message, now_secs, text};
use tern_gateway::TokenKey;
use tern_proto::link::v1::{self as link, link_frame::Body};
use tern_proto::v1;
use tern_proto::{FrameDecoder, encode_to_bytes};
use tern_sdk::{Client, Target, new_client_msg_id};
use tern_testkit::cluster::{Cluster, ClusterOptions, Discovery};
use tern_testkit::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::block_in_place;

fn start(options: ClusterOptions) -> (Cluster, TokenKey) {
    let cluster = block_in_place(|| Cluster::start(env!("CARGO_BIN_EXE_tern").as_ref(), options))
        .unwrap_or_else(|e| panic!("cluster start: {e}"));
    let key = TokenKey::from_base64(cluster.key_base64()).unwrap();
    (cluster, key)
}

fn mint(key: &TokenKey, user: &str) -> String {
    key.mint_for(user, "phone", now_secs(), 3600)
}

/// Other valid secrets than the cluster's (32 bytes of 7, of 8; base64).
const OTHER_SECRET: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc";
const THIRD_SECRET: &str = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg";

/// Polls `scrape` until metric `name` is at least `min` (a wait for an event, bounded by WAIT).
async fn wait_metric(cluster: &Cluster, scrape: impl Fn() -> Metrics, name: &str, min: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = block_in_place(&scrape).get(name).unwrap_or(0.0);
        if v >= min {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} = {v} < {min}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `logs()` (ANSI codes stripped) holds every needle: a log line is written after
/// the metric it comes with moves, and the testkit reads child output on a thread of its own.
async fn wait_logs(cluster: &Cluster, logs: impl Fn() -> String, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = plain(logs());
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needles:?} not logged\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Log text without ANSI colour codes.
fn plain(logs: String) -> String {
    let mut out = String::with_capacity(logs.len());
    let mut chars = logs.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn metric(m: Metrics, name: &str) -> f64 {
    m.get(name).unwrap_or(0.0)
}

/// Sends with one client_msg_id, again while the answer is retryable (links come up after
/// start); bounded by WAIT.
async fn send(client: &Client, to: &str, body: &str, cluster: &Cluster) -> v1::SendAck {
    let id = new_client_msg_id();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sent = client
            .send_with_id(Target::Peer(to.into()), id.clone(), "text/plain", text(body))
            .await;
        match sent {
            Ok(ack) => return ack,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("send to {to}: {e:?}\n{}", cluster.logs()),
        }
    }
}

/// A raw link peer speaking LinkFrames.
struct LinkRaw {
    stream: TcpStream,
    buf: BytesMut,
}

impl LinkRaw {
    async fn connect(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), buf: BytesMut::new() }
    }

    async fn send(&mut self, frames: &[link::LinkFrame]) {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&encode_to_bytes(f, usize::MAX).unwrap());
        }
        // The peer may already have closed (it refuses as soon as it sees a bad frame).
        let _ = self.stream.write_all(&out).await;
    }

    async fn recv(&mut self) -> Option<link::LinkFrame> {
        let mut decoder = FrameDecoder::new(16 * 1024 * 1024);
        loop {
            if let Some(f) = decoder.decode_as::<link::LinkFrame>(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no link frame in time");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn drain_to_eof(&mut self) -> Vec<link::LinkFrame> {
        let mut out = Vec::new();
        while let Some(f) = self.recv().await {
            out.push(f);
        }
        out
    }
}

fn frame(id: u64, body: Body) -> link::LinkFrame {
    link::LinkFrame { id, body: Some(body) }
}

fn hello(version: u32, nonce: Vec<u8>) -> link::LinkFrame {
    frame(0, Body::Hello(link::Hello { gateway_id: "G0".into(), version, nonce: nonce.into() }))
}

/// A forged Send from alice to bob, as a process posing as gateway G0 would send it.
fn forged_send() -> link::LinkFrame {
    let env = v1::Envelope {
        request_id: 1,
        body: Some(v1::envelope::Body::Send(v1::Send {
            conversation_id: "dm:alice:bob".into(),
            client_msg_id: "forged-1".into(),
            content_type: "text/plain".into(),
            body: Bytes::from_static(b"forged"),
            ..Default::default()
        })),
    };
    frame(
        7,
        Body::Request(link::Request {
            user_id: "alice".into(),
            device_id: "phone".into(),
            connection_id: 1,
            envelope: Some(env),
        }),
    )
}

fn kinds(frames: &[link::LinkFrame]) -> Vec<&'static str> {
    frames
        .iter()
        .map(|f| match &f.body {
            Some(Body::Hello(_)) => "Hello",
            Some(Body::HelloOk(_)) => "HelloOk",
            Some(Body::HelloProof(_)) => "HelloProof",
            Some(Body::LinkUp(_)) => "LinkUp",
            Some(Body::Refused(_)) => "Refused",
            Some(Body::Request(_)) => "Request",
            Some(Body::Response(_)) => "Response",
            Some(Body::Push(_)) => "Push",
            Some(Body::KickConnection(_)) => "KickConnection",
            Some(Body::Ping(_)) => "Ping",
            Some(Body::Pong(_)) => "Pong",
            None => "empty",
        })
        .collect()
}

fn refused_reason(frames: &[link::LinkFrame]) -> String {
    frames
        .iter()
        .find_map(|f| match &f.body {
            Some(Body::Refused(r)) => Some(r.reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Refused frame in {:?}", kinds(frames)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_secret_cannot_act_as_a_gateway() {
    let (cluster, key) = start(ClusterOptions {
        gateways: 1,
        workers: 1,
        worker_sets: vec!["cluster.link_handshake_timeout=1s".into()],
        ..Default::default()
    });
    let worker = cluster.worker_link_addr(0);

    // 1. Hello claiming to be gateway G0, then a Request at once, without any proof.
    let mut raw = LinkRaw::connect(worker).await;
    raw.send(&[hello(2, vec![1; 32]), forged_send()]).await;
    let got = raw.drain_to_eof().await;
    assert_eq!(kinds(&got), ["HelloOk", "Refused"], "{got:?}");
    assert!(refused_reason(&got).contains("unexpected Request"), "{got:?}");

    // 2. An old (version 1) Hello, as before links were authenticated, then a Request.
    let mut raw = LinkRaw::connect(worker).await;
    raw.send(&[hello(1, Vec::new()), forged_send()]).await;
    let got = raw.drain_to_eof().await;
    assert_eq!(kinds(&got), ["Refused"], "{got:?}");
    assert!(refused_reason(&got).contains("link version 1"), "{got:?}");

    // 3. A made-up proof, then a Request.
    let mut raw = LinkRaw::connect(worker).await;
    raw.send(&[hello(2, vec![1; 32])]).await;
    assert_eq!(kinds(&[raw.recv().await.unwrap()]), ["HelloOk"]);
    let proof = frame(0, Body::HelloProof(link::HelloProof { proof: vec![0xA5; 32].into() }));
    raw.send(&[proof, forged_send()]).await;
    let got = raw.drain_to_eof().await;
    assert_eq!(kinds(&got), ["Refused"], "{got:?}");
    assert!(refused_reason(&got).contains("bad proof"), "{got:?}");

    // 4. A peer that says nothing is closed at the handshake timeout.
    let mut raw = LinkRaw::connect(worker).await;
    assert!(raw.drain_to_eof().await.is_empty());

    let scrape = || cluster.worker_metrics(0).unwrap();
    wait_metric(&cluster, scrape, "tern_dispatch_link_auth_failures_total", 4.0).await;
    let m = block_in_place(|| cluster.worker_metrics(0)).unwrap();
    assert_eq!(metric(m.clone(), "tern_dispatch_link_auth_failures_total"), 4.0);
    assert_eq!(metric(m, "tern_dispatch_accepted_total"), 0.0, "a forged Send was accepted");
    let needles = ["refused a gateway link", "claimed_gateway=G0", "peer=127.0.0.1:"];
    wait_logs(&cluster, || cluster.worker(0).logs(), &needles).await;

    // The real gateway G0's link was never replaced by the impostors: a message between two
    // of its users is accepted and pushed to the recipient over that link.
    let (alice, _ae) = connect(cluster.gateway_addr(0), &mint(&key, "alice")).await;
    let (_bob, mut be) = connect(cluster.gateway_addr(0), &mint(&key, "bob")).await;
    let ack = send(&alice, "bob", "real", &cluster).await;
    assert_eq!(ack.seq, 1, "the forged send took no seq");
    let got = next_message(&mut be).await;
    assert_eq!((got.seq, got.body), (1, text("real")));
    let m = block_in_place(|| cluster.worker_metrics(0)).unwrap();
    assert_eq!(metric(m, "tern_dispatch_accepted_total"), 1.0);
}

/// What a rogue worker saw from the gateway, per connection.
#[derive(Default)]
struct Seen {
    /// Kinds of the frames each connection received from the gateway, once it ended.
    connections: Vec<Vec<&'static str>>,
}

/// A rogue "worker" at `listener`: without `relay_to` it answers Hello with a made-up proof;
/// with it, it relays every byte to and from the real worker there. Either way it records
/// what the gateway sent.
fn rogue(listener: TcpListener, relay_to: Option<SocketAddr>, seen: Arc<Mutex<Seen>>) {
    let own = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut gw, _)) = listener.accept().await else { return };
            let (seen, own) = (seen.clone(), own.clone());
            tokio::spawn(async move {
                let mut from_gateway = BytesMut::new();
                match relay_to {
                    None => {
                        let mut decoder = FrameDecoder::new(1 << 20);
                        let mut buf = BytesMut::new();
                        while let Ok(n) = gw.read_buf(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            from_gateway.extend_from_slice(&buf[buf.len() - n..]);
                            while let Ok(Some(f)) = decoder.decode_as::<link::LinkFrame>(&mut buf) {
                                if let Some(Body::Hello(_)) = f.body {
                                    let ok = frame(
                                        0,
                                        Body::HelloOk(link::HelloOk {
                                            worker_id: "rogue".into(),
                                            nonce: vec![9; 32].into(),
                                            address: own.clone(),
                                            proof: vec![0; 32].into(),
                                        }),
                                    );
                                    let ok = encode_to_bytes(&ok, usize::MAX).unwrap();
                                    let _ = gw.write_all(&ok).await;
                                }
                            }
                        }
                    }
                    Some(real) => {
                        let Ok(mut w) = TcpStream::connect(real).await else { return };
                        let (mut gr, mut gwr) = gw.split();
                        let (mut wr_, mut ww) = w.split();
                        let up = async {
                            let mut b = [0u8; 4096];
                            while let Ok(n) = gr.read(&mut b).await {
                                if n == 0 || ww.write_all(&b[..n]).await.is_err() {
                                    break;
                                }
                                from_gateway.extend_from_slice(&b[..n]);
                            }
                        };
                        let down = async {
                            let _ = tokio::io::copy(&mut wr_, &mut gwr).await;
                        };
                        // Until the gateway side ends (it refuses and closes).
                        tokio::select! { _ = up => {}, _ = down => {} }
                    }
                }
                let mut decoder = FrameDecoder::new(1 << 20);
                let mut frames = Vec::new();
                while let Ok(Some(f)) = decoder.decode_as::<link::LinkFrame>(&mut from_gateway) {
                    frames.push(f);
                }
                seen.lock().unwrap().connections.push(kinds(&frames));
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_never_links_a_rogue_worker_announced_in_presence_or_configured() {
    let (mut cluster, key) = start(ClusterOptions {
        gateways: 1,
        workers: 1,
        discovery: Discovery::Presence,
        ..Default::default()
    });
    let seen_bogus = Arc::new(Mutex::new(Seen::default()));
    let seen_relay = Arc::new(Mutex::new(Seen::default()));
    let bogus = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (bogus_addr, relay_addr) = (bogus.local_addr().unwrap(), relay.local_addr().unwrap());
    rogue(bogus, None, seen_bogus.clone());
    rogue(relay, Some(cluster.worker_link_addr(0)), seen_relay.clone());
    // Announce both in presence like workers do, live for an hour.
    let expires = (now_secs() as u64 + 3600) * 1000;
    for (id, addr) in [("rogue-bogus", bogus_addr), ("rogue-relay", relay_addr)] {
        let value = format!("{addr} {expires}");
        let reply = block_in_place(|| {
            cluster.presence_redis().command(&[
                b"HSET",
                b"tern:workers",
                id.as_bytes(),
                value.as_bytes(),
            ])
        });
        reply.unwrap();
    }
    // The gateway dials both (discovery every second) and refuses both.
    let ended = |s: &Arc<Mutex<Seen>>| !s.lock().unwrap().connections.is_empty();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(ended(&seen_bogus) && ended(&seen_relay)) {
        assert!(tokio::time::Instant::now() < deadline, "not dialed\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scrape = || cluster.gateway_metrics(0).unwrap();
    wait_metric(&cluster, scrape, "tern_gateway_link_auth_failures_total", 2.0).await;

    // Users whose requests would hash to the rogues if they were linked: every send is served
    // by the real worker and pushed to the recipient.
    let (_bob, mut be) = connect(cluster.gateway_addr(0), &mint(&key, "bob")).await;
    for i in 0..12 {
        let (u, _ue) = connect(cluster.gateway_addr(0), &mint(&key, &format!("user{i}"))).await;
        let ack = send(&u, "bob", "hi", &cluster).await;
        assert_eq!(ack.seq, 1);
        assert_eq!(next_message(&mut be).await.sender_user_id, format!("user{i}"));
    }
    let m = block_in_place(|| cluster.worker_metrics(0)).unwrap();
    assert_eq!(metric(m, "tern_dispatch_accepted_total"), 12.0);

    // The rogues got a Hello (and the refusal) on each attempt, never a proof or a request.
    for seen in [&seen_bogus, &seen_relay] {
        for c in &seen.lock().unwrap().connections {
            assert!(c.iter().all(|k| matches!(*k, "Hello" | "Refused")), "{c:?}");
        }
    }
    // The same with a static list: a gateway configured with the real worker and the rogue.
    let configured = format!("{},{bogus_addr}", cluster.worker_link_addr(0));
    let before = seen_bogus.lock().unwrap().connections.len();
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        format!("cluster.dispatch_workers={configured}"),
        format!("cluster.presence_redis={}", cluster.presence_url()),
        format!("cluster.secret={}", cluster.secret_base64()),
        format!("auth.hs256_key={}", cluster.key_base64()),
        "server.log=warn".to_string(),
    ];
    let mut args: Vec<String> =
        ["gateway", "--id", "G9", "--listen", "127.0.0.1:0"].map(String::from).to_vec();
    args.extend(["--http-listen".into(), String::new(), "--data-dir".into()]);
    args.push(dir.path().display().to_string());
    for set in sets {
        args.extend(["--set".to_string(), set]);
    }
    let g9 = block_in_place(|| {
        tern_testkit::TernProcess::spawn(env!("CARGO_BIN_EXE_tern"), args.clone())
    })
    .unwrap();
    let g9_addr = g9.client_addr().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen_bogus.lock().unwrap().connections.len() == before {
        assert!(tokio::time::Instant::now() < deadline, "G9 never dialed the rogue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..12 {
        let (u, _ue) = connect(g9_addr, &mint(&key, &format!("static{i}"))).await;
        assert_eq!(send(&u, "bob", "hi", &cluster).await.seq, 1);
        assert_eq!(next_message(&mut be).await.sender_user_id, format!("static{i}"));
    }
    for c in &seen_bogus.lock().unwrap().connections {
        assert!(c.iter().all(|k| matches!(*k, "Hello" | "Refused")), "{c:?}");
    }
    let bogus = format!("worker={bogus_addr}");
    wait_logs(&cluster, || g9.logs(), &[&bogus]).await;
    block_in_place(|| drop(g9));

    let relay = format!("worker={relay_addr}");
    let needles =
        ["refused a dispatch worker link", &bogus, "bad proof", &relay, "proves the address"];
    wait_logs(&cluster, || cluster.gateway(0).logs(), &needles).await;
    assert!(
        block_in_place(|| cluster.gateway_metrics(0)).unwrap().get("tern_gateway_links_up_total")
            >= Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_secrets_refuse_each_other_both_ways() {
    // A worker with another secret: the gateway refuses its proof (and proves nothing).
    let (cluster, key) = start(ClusterOptions {
        gateways: 1,
        workers: 1,
        worker_sets: vec![format!("cluster.secret={OTHER_SECRET}")],
        ..Default::default()
    });
    let gw = || cluster.gateway_metrics(0).unwrap();
    let wk = || cluster.worker_metrics(0).unwrap();
    wait_metric(&cluster, gw, "tern_gateway_link_auth_failures_total", 1.0).await;
    wait_metric(&cluster, wk, "tern_dispatch_link_auth_failures_total", 1.0).await;
    let gw_logs = || cluster.gateway(0).logs();
    wait_logs(&cluster, gw_logs, &["refused a dispatch worker link", "bad proof"]).await;
    wait_logs(&cluster, || cluster.worker(0).logs(), &["refused by the peer"]).await;
    // No link: a login cannot be checked in against the device records (PROTOCOL.md section
    // 20), so it is refused UNAVAILABLE (fatal; a raw client: the SDK would keep retrying), and
    // the worker never sees anything.
    let mut raw = common::Raw::connect(cluster.gateway_addr(0)).await;
    let login = v1::Login { token: mint(&key, "alice"), protocol_version: 1, ..Default::default() };
    raw.send(1, v1::envelope::Body::Login(login)).await;
    let answer = raw.recv_answer().await;
    assert_eq!(common::error_code(&answer), Some((v1::ErrorCode::Unavailable, true)), "{answer:?}");
    assert_eq!(metric(block_in_place(wk), "tern_dispatch_accepted_total"), 0.0);
    assert_eq!(metric(block_in_place(gw), "tern_gateway_links_up_total"), 0.0);
    block_in_place(|| drop(cluster));

    // A gateway that accepts the worker's secret but proves with another one (as in a rotation
    // skipped on the workers): the worker refuses it, and tells the gateway.
    let (cluster, _key) = start(ClusterOptions {
        gateways: 1,
        workers: 1,
        worker_sets: vec![format!("cluster.secret={OTHER_SECRET}")],
        gateway_sets: vec![format!("cluster.secret={THIRD_SECRET},{OTHER_SECRET}")],
        ..Default::default()
    });
    let gw = || cluster.gateway_metrics(0).unwrap();
    let wk = || cluster.worker_metrics(0).unwrap();
    wait_metric(&cluster, wk, "tern_dispatch_link_auth_failures_total", 1.0).await;
    wait_metric(&cluster, gw, "tern_gateway_link_auth_failures_total", 1.0).await;
    let needles = ["refused a gateway link", "bad proof", "claimed_gateway=G0"];
    wait_logs(&cluster, || cluster.worker(0).logs(), &needles).await;
    wait_logs(&cluster, || cluster.gateway(0).logs(), &["refused by the peer"]).await;
    assert_eq!(metric(block_in_place(gw), "tern_gateway_links_up_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_links_work_on_loopback_when_asked_for() {
    let insecure = vec!["cluster.secret=".to_string(), "cluster.insecure_links=true".to_string()];
    let (cluster, key) = start(ClusterOptions {
        gateways: 1,
        workers: 1,
        worker_sets: insecure.clone(),
        gateway_sets: insecure,
        ..Default::default()
    });
    let (alice, _ae) = connect(cluster.gateway_addr(0), &mint(&key, "alice")).await;
    let (_bob, mut be) = connect(cluster.gateway_addr(0), &mint(&key, "bob")).await;
    assert_eq!(send(&alice, "bob", "dev", &cluster).await.seq, 1);
    assert_eq!(next_message(&mut be).await.body, text("dev"));
    assert!(plain(cluster.worker(0).logs()).contains("NOT authenticated"), "{}", cluster.logs());
}

#[test]
fn gateway_and_dispatch_refuse_to_start_without_a_secret() {
    use tern_testkit::process::{ProcessError, TernProcess};
    let bin = env!("CARGO_BIN_EXE_tern");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &["gateway", "--listen", "127.0.0.1:0", "--http-listen", "", "--data-dir", data],
        &["dispatch", "--link-listen", "127.0.0.1:0", "--http-listen", "", "--data-dir", data],
        &[
            "dispatch",
            "--link-listen",
            "0.0.0.0:0",
            "--http-listen",
            "",
            "--set",
            "cluster.insecure_links=true",
        ],
    ];
    let expected = ["no cluster secret", "no cluster secret", "loopback development only"];
    for (args, want) in runs.iter().zip(expected) {
        match TernProcess::spawn(bin, args.iter().copied()) {
            Err(ProcessError::Exited { logs, .. }) => {
                assert!(logs.contains(want), "{args:?}: {logs}")
            }
            Err(e) => panic!("{args:?}: {e}"),
            Ok(p) => panic!("{args:?} started: {}", p.logs()),
        }
    }
}
