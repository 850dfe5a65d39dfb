//! `tern dispatch` and `tern gateway` as real processes over a presence Redis and a store Redis
//! that serve TLS only and require a password (the `default` user of `requirepass` for
//! presence, an ACL user for the store): `rediss://user:password@...` URLs with the CA file
//! keys work end to end, and a wrong password stops the process at start with a clear error
//! that does not show the password.

use crate::common;

use common::{WAIT, connect, next_message, now_secs, text};
use tern_gateway::TokenKey;
use tern_sdk::{Target, new_client_msg_id};
use tern_testkit::redis_server::{RedisSecurity, RedisTls};
use tern_testkit::{ProcessError, RedisOptions, RedisServer, TernProcess};
use tokio::task::block_in_place;

const SECRET: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc";

fn spawn(args: Vec<String>) -> Result<TernProcess, ProcessError> {
    block_in_place(|| TernProcess::spawn(env!("CARGO_BIN_EXE_tern"), args))
}

/// The logs of a process that must stop at start (it may have announced itself first: the
/// store and presence are opened after the listeners are bound), once it exited with its error.
async fn exit_logs(spawned: Result<TernProcess, ProcessError>) -> String {
    let mut p = match spawned {
        Err(ProcessError::Exited { logs, .. }) => return logs,
        Err(e) => panic!("{e}"),
        Ok(p) => p,
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let logs = p.logs();
        if !p.is_running() && logs.contains("Error") {
            return logs;
        }
        assert!(tokio::time::Instant::now() < deadline, "still running: {logs}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_over_redis_with_tls_and_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let tls = RedisTls::generate(dir.path()).unwrap();
    let presence = RedisServer::start_secured(
        RedisOptions::without_aof(),
        RedisSecurity {
            requirepass: Some("pres-pw".into()),
            tls: Some(tls.clone()),
            ..RedisSecurity::default()
        },
    )
    .unwrap();
    let store = RedisServer::start_secured(
        RedisOptions::default(),
        RedisSecurity {
            acl_users: vec!["tern on >store-pw ~tern:* +@all".into()],
            tls: Some(tls.clone()),
            ..RedisSecurity::default()
        },
    )
    .unwrap();
    let key = TokenKey::from_secret(&[42u8; 32]).unwrap();
    let ca = tls.ca_file.display().to_string();
    let common_sets = |presence_url: String| {
        let mut v = Vec::new();
        for set in [
            format!("cluster.presence_redis={presence_url}"),
            format!("cluster.presence_redis_ca_file={ca}"),
            format!("cluster.secret={SECRET}"),
            format!("auth.hs256_key={}", key.to_base64()),
            "server.log=warn".to_string(),
        ] {
            v.push("--set".to_string());
            v.push(set);
        }
        v.push("--data-dir".into());
        v.push(dir.path().display().to_string());
        v
    };
    let dispatch = |store_url: String, presence_url: String| {
        let mut args: Vec<String> = [
            "dispatch",
            "--id",
            "W0",
            "--link-listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--set",
            "store.backend=redis",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["--set".into(), format!("store.redis_url={store_url}")]);
        args.extend(["--set".into(), format!("store.redis_ca_file={ca}")]);
        args.extend(common_sets(presence_url));
        args
    };
    let pres_url = presence.url_with_auth("", "pres-pw");
    let store_url = store.url_with_auth("tern", "store-pw");
    assert!(pres_url.starts_with("rediss://") && store_url.starts_with("rediss://"));
    let worker = spawn(dispatch(store_url.clone(), pres_url.clone())).unwrap();
    let link = worker.link_addr().unwrap();
    let mut gw_args: Vec<String> =
        ["gateway", "--id", "G0", "--listen", "127.0.0.1:0"].map(String::from).to_vec();
    gw_args.extend(["--http-listen".into(), String::new()]);
    gw_args.extend(["--set".into(), format!("cluster.dispatch_workers={link}")]);
    gw_args.extend(common_sets(pres_url.clone()));
    let gateway = spawn(gw_args).unwrap();
    let addr = gateway.client_addr().unwrap();

    // A message crosses: gateway -> worker (store over TLS) -> presence lookup (TLS) -> push.
    let (alice, _ae) = connect(addr, &key.mint_for("alice", "phone", now_secs(), 3600)).await;
    let (_bob, mut be) = connect(addr, &key.mint_for("bob", "phone", now_secs(), 3600)).await;
    let id = new_client_msg_id();
    let deadline = tokio::time::Instant::now() + WAIT;
    let ack = loop {
        let sent = alice
            .send_with_id(Target::Peer("bob".into()), id.clone(), "text/plain", text("over tls"))
            .await;
        match sent {
            Ok(ack) => break ack,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}\n{}\n{}", worker.logs(), gateway.logs()),
        }
    };
    assert_eq!(ack.seq, 1);
    assert_eq!(next_message(&mut be).await.body, text("over tls"));

    // Wrong passwords: the process stops at start, says why, and never prints the password.
    let wrong_store = store.url_with_auth("tern", "not-the-store-pw");
    let logs = exit_logs(spawn(dispatch(wrong_store, pres_url.clone()))).await;
    assert!(logs.contains("authentication failed"), "{logs}");
    assert!(logs.contains("rediss://***@"), "{logs}");
    assert!(!logs.contains("not-the-store-pw"), "{logs}");
    let wrong_presence = presence.url_with_auth("", "not-the-pres-pw");
    let logs = exit_logs(spawn(dispatch(store_url, wrong_presence))).await;
    assert!(logs.to_lowercase().contains("authentication failed"), "{logs}");
    assert!(logs.contains("rediss://***@"), "{logs}");
    assert!(!logs.contains("not-the-pres-pw"), "{logs}");
}
