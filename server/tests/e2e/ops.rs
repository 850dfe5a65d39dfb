//! Operator endpoints: /healthz answers, /metrics speaks Prometheus text, unknown paths 404.

use crate::common;

use common::*;
use tern_sdk::Target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoints() {
    let srv = TestServer::start().await;
    let health = srv.http_get("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.ends_with("ok\n"));
    assert!(srv.http_get("/nope").await.starts_with("HTTP/1.1 404"));

    let (alice, _ae) = srv.client("alice", "phone").await;
    alice.send(Target::Peer("bob".into()), "text/plain", text("count me")).await.unwrap();
    let text = srv.http_get("/metrics").await;
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(text.contains("# TYPE tern_gateway_connections_open gauge"));
    assert_eq!(srv.metric("tern_gateway_connections_open").await, 1);
    assert_eq!(srv.metric("tern_dispatch_accepted_total").await, 1);
    let batches = srv.metric("tern_dispatch_commit_batches_total").await;
    assert!(batches >= 1);
    assert!(text.contains("# TYPE tern_dispatch_commit_seconds histogram"));
    assert_eq!(srv.metric("tern_dispatch_commit_seconds_count").await, batches);
}

/// Polls `GET path` until it answers `status` (bounded by [`WAIT`]); the answer.
fn wait_status(addr: std::net::SocketAddr, path: &str, status: u16) -> tern_testkit::HttpResponse {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = tern_testkit::http_get(addr, path, WAIT);
        match got {
            Ok(r) if r.status == status => return r,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => panic!("GET {path} from {addr}: wanted {status}, last {other:?}"),
        }
    }
}

/// `/readyz` is what a load balancer polls: 200 `ready` while serving, 503 `draining` from the
/// moment shutdown begins, while the connections the server has are still served (for
/// `server.drain_delay`); `/healthz` stays 200 then: draining is not broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_draining_once_shutdown_begins() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::task::block_in_place(|| {
        common::chat::serve(
            dir.path(),
            &["--set", "server.drain_delay=10m", "--set", "server.log=info"],
        )
    });
    let http = server.http_addr().unwrap();
    let ready = tokio::task::block_in_place(|| wait_status(http, "/readyz", 200));
    assert_eq!(ready.body, "ready\n");
    let key = ChildServer::key(dir.path());
    let token = key.mint_for("alice", "phone", now_secs(), 3600);
    let (alice, _events) = connect(server.client_addr().unwrap(), &token).await;

    let pid = server.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::task::block_in_place(|| {
        // The phase changes before this line is logged.
        let deadline = std::time::Instant::now() + WAIT;
        while !server.logs().contains("/readyz now answers 503 draining") {
            assert!(std::time::Instant::now() < deadline, "no drain log line:\n{}", server.logs());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let draining = tern_testkit::http_get(http, "/readyz", WAIT).unwrap();
        assert_eq!((draining.status, draining.body.as_str()), (503, "draining\n"));
        let health = tern_testkit::http_get(http, "/healthz", WAIT).unwrap();
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    });
    // Still served while draining.
    let ack = alice.send(Target::Peer("bob".into()), "text/plain", text("drain")).await.unwrap();
    assert_eq!(ack.seq, 1);
    assert!(server.is_running());
    tokio::task::block_in_place(|| server.kill9().unwrap());
}

/// Every process checks what it depends on: a worker its store (a write round-trip) and
/// presence, a gateway presence and its links to workers. A dependency that goes down turns
/// `/healthz` and `/readyz` into 503 with a line naming it, and back once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_the_dependency_that_is_down() {
    use tern_testkit::cluster::{Cluster, ClusterOptions};
    tokio::task::block_in_place(|| {
        let options = ClusterOptions { gateways: 1, workers: 1, ..ClusterOptions::default() };
        let mut cluster = Cluster::start(env!("CARGO_BIN_EXE_tern").as_ref(), options).unwrap();
        cluster.wait_healthy(WAIT).unwrap_or_else(|e| panic!("{e}"));
        let (gw, worker) = (cluster.gateway_http(0), cluster.worker_http(0));
        for http in [gw, worker] {
            assert_eq!(wait_status(http, "/readyz", 200).body, "ready\n");
        }

        cluster.store_redis().kill9().unwrap();
        let sick = wait_status(worker, "/healthz", 503);
        assert!(sick.body.starts_with("store: "), "{sick:?}");
        assert_eq!(sick.body.lines().count(), 1, "only the store is down: {sick:?}");
        assert!(wait_status(worker, "/readyz", 503).body.starts_with("store: "));
        assert_eq!(wait_status(gw, "/healthz", 200).body, "ok\n", "the gateway needs no store");
        cluster.store_redis().start_again().unwrap();
        assert_eq!(wait_status(worker, "/healthz", 200).body, "ok\n");

        cluster.presence_redis().kill9().unwrap();
        for http in [gw, worker] {
            let sick = wait_status(http, "/healthz", 503);
            assert!(sick.body.starts_with("presence: "), "{sick:?}");
        }
        cluster.presence_redis().start_again().unwrap();
        cluster.wait_healthy(WAIT).unwrap_or_else(|e| panic!("{e}"));

        cluster.kill9_worker(0).unwrap();
        let sick = wait_status(gw, "/healthz", 503);
        assert_eq!(sick.body, "links: no dispatch worker linked\n");
        cluster.restart_worker(0).unwrap();
        cluster.wait_healthy(WAIT).unwrap_or_else(|e| panic!("{e}"));
    });
}
