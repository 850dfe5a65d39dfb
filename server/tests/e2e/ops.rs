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
    assert!(srv.metric("tern_dispatch_commit_batches_total").await >= 1);
}
