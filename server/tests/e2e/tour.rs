//! The five-minute tour's traps, as a newcomer meets them, through real `tern` processes: a chat
//! that goes deaf after a server restart, a chat run from the wrong directory, a restarted chat
//! that replays everything, misspelled environment variables, errors as backtraces.

use crate::common;

use std::process::{Command, Output};
use std::sync::Arc;

use common::chat::{Chat, serve, tern_bin};
use common::*;
use tern_gateway::TokenKey;
use tern_sdk::{Client, ClientConfig, FilePersistence, Target};
use tokio::task::block_in_place;

/// Alice, as an SDK client of the child server in `dir`.
async fn alice(server: &tern_testkit::TernProcess, dir: &std::path::Path) -> Client {
    let key = ChildServer::key(dir);
    connect(server.client_addr().unwrap(), &key.mint_for("alice", "phone", now_secs(), 3600))
        .await
        .0
}

/// Runs `tern ARGS` in `cwd` with extra environment variables, to completion.
fn tern(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(tern_bin());
    cmd.args(args).current_dir(cwd).env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tern")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server restart kicks every connection with SERVER_SHUTDOWN; the chat's SDK client
/// reconnects, and the chat must go on printing what arrives (it used to stop at any kick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_keeps_printing_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = block_in_place(|| serve(dir.path(), &[]));
    let addr = server.client_addr().unwrap().to_string();
    let data = dir.path().to_str().unwrap();
    let mut chat = block_in_place(|| {
        let mut chat = Chat::start(
            dir.path(),
            &["--user", "bob", "--to", "alice", "--addr", &addr, "--data-dir", data],
        );
        chat.wait_line("  · connected");
        chat
    });
    let alice = alice(&server, dir.path()).await;
    alice.send(Target::Peer("bob".into()), "text/plain", text("before")).await.unwrap();
    block_in_place(|| chat.wait_line("alice/phone: before"));

    block_in_place(|| {
        server.restart().unwrap();
        chat.wait_line("kicked by the server: ServerShutdown");
        chat.wait_line("  · connected");
    });
    // Alice's client reconnects too; the send waits for it.
    alice.send(Target::Peer("bob".into()), "text/plain", text("after")).await.unwrap();
    block_in_place(|| chat.wait_line("alice/phone: after"));
    // And the chat still sends.
    block_in_place(|| {
        chat.type_line("still here");
        chat.wait_line("✓ #3 dm:alice:bob");
    });
    alice.close().await;
    assert!(block_in_place(|| chat.quit()).success());
}

/// A chat restarted on the same data directory resumes at its saved cursor: it shows the
/// message that came while it was away, not the conversation from #1 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_chat_shows_only_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = block_in_place(|| serve(dir.path(), &[]));
    let addr = server.client_addr().unwrap().to_string();
    let data = dir.path().to_str().unwrap();
    let args = ["--user", "bob", "--to", "alice", "--addr", &addr, "--data-dir", data];
    let alice = alice(&server, dir.path()).await;

    let mut chat = block_in_place(|| Chat::start(dir.path(), &args));
    block_in_place(|| chat.wait_line("  · connected"));
    alice.send(Target::Peer("bob".into()), "text/plain", text("first")).await.unwrap();
    block_in_place(|| chat.wait_line("#1] alice/phone: first"));
    assert!(block_in_place(|| chat.quit()).success());
    assert!(dir.path().join("chat").join("bob-cli.json").exists());

    alice.send(Target::Peer("bob".into()), "text/plain", text("second")).await.unwrap();
    let mut chat = block_in_place(|| Chat::start(dir.path(), &args));
    block_in_place(|| chat.wait_line("#2] alice/phone: second"));
    // Messages come in seq order, so #1 would have been printed before #2.
    assert!(
        !chat.seen.iter().any(|l| l.contains("first")),
        "the restarted chat replayed #1:\n{}",
        chat.seen.join("\n")
    );
    alice.close().await;
    assert!(block_in_place(|| chat.quit()).success());
}

/// The SDK side of the same: a client on a [`FilePersistence`] file, closed and connected
/// again, gets only the messages past its saved cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_persistence_resumes_after_a_client_restart() {
    let srv = TestServer::start().await;
    let state = srv.dir.path().join("bob.json");
    let open = || async {
        let persistence = Arc::new(FilePersistence::open(&state).unwrap());
        let cfg = ClientConfig::new(srv.addr.to_string(), srv.token("bob", "laptop"));
        Client::connect(cfg, persistence).await.unwrap()
    };
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (bob, mut events) = open().await;
    alice.send(Target::Peer("bob".into()), "text/plain", text("one")).await.unwrap();
    assert_eq!(next_message(&mut events).await.seq, 1);
    bob.close().await;

    alice.send(Target::Peer("bob".into()), "text/plain", text("two")).await.unwrap();
    let (_bob, mut events) = open().await;
    let m = next_message(&mut events).await;
    assert_eq!((m.seq, m.body.as_ref()), (2, b"two".as_ref()), "resumed past #1");
}

/// `tern token` and `tern chat --user` outside the server's directory: no key is made up (it
/// would sign tokens no server accepts); the error says what to do.
#[test]
fn minting_refuses_a_missing_key_and_creates_none() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [&["token", "--user", "alice"][..], &["chat", "--user", "alice", "--to", "bob"]] {
        let out = tern(cwd.path(), args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("error: no token signing key at data/jwt.key"), "{args:?}: {err}");
        for hint in ["only the server creates it", "--data-dir", "-c CONFIG", "--token"] {
            assert!(err.contains(hint), "{args:?}: no {hint:?} in {err}");
        }
        assert!(
            !cwd.path().join("data").exists(),
            "{args:?} created {:?}",
            cwd.path().join("data")
        );
    }
}

/// A chat whose key is not the server's: the refused login is explained, not just
/// "signature mismatch".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_explains_a_token_signed_with_another_key() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = block_in_place(|| serve(server_dir.path(), &[]));
    let addr = server.client_addr().unwrap().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    let other_key = TokenKey::generate().unwrap().to_base64();
    std::fs::write(elsewhere.path().join("jwt.key"), format!("{other_key}\n")).unwrap();
    let data = elsewhere.path().to_str().unwrap();
    let out = block_in_place(|| {
        tern(
            elsewhere.path(),
            &["chat", "--user", "alice", "--addr", &addr, "--data-dir", data],
            &[],
        )
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("the server at {addr} refused the token")), "{err}");
    assert!(err.contains("signature mismatch"), "the server's reason is kept: {err}");
    assert!(err.contains("the server uses another key"), "{err}");
    assert!(err.contains(&format!("{data}/jwt.key")), "names the key used: {err}");
}

/// A misspelled `TERN_*` variable is named in one warning line with the key it resembles.
#[test]
fn misspelled_environment_variables_are_warned_about() {
    let cwd = tempfile::tempdir().unwrap();
    let key = format!("auth.hs256_key={}", test_key().to_base64());
    let out = tern(
        cwd.path(),
        &["token", "--user", "alice", "--set", &key],
        &[
            ("TERN_GATEWAY_IDLE_TIMOUT", "5m"),
            ("TERN_SERVER_LOG", "warn"),
            ("TERN_NOT_A_THING", "1"),
        ],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!out.stdout.is_empty(), "the token is still printed");
    let lines: Vec<&str> =
        err.lines().filter(|l| l.contains("unknown environment variable")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].ends_with(
            "unknown environment variable TERN_GATEWAY_IDLE_TIMOUT is ignored; did you mean \
             TERN_GATEWAY_IDLE_TIMEOUT?"
        ),
        "{err}"
    );
    assert!(lines[1].contains("TERN_NOT_A_THING is ignored (configuration variables are"), "{err}");
}

/// With RUST_BACKTRACE set, a user error is still one line: the message, no stack trace.
#[test]
fn user_errors_are_one_line_even_with_rust_backtrace() {
    let cwd = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["serve", "--set", "gateway.nope=1"],
            "error: --set gateway.nope=1: unknown key gateway.nope",
        ),
        (&["serve", "-c", "missing.toml"], "error: reading config file missing.toml: No such file"),
        (&["token", "--user", "bob"], "error: no token signing key at"),
    ];
    for backtrace in ["1", "full"] {
        for (args, message) in cases {
            let out = tern(cwd.path(), args, &[("RUST_BACKTRACE", backtrace)]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.starts_with(message), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?} with RUST_BACKTRACE={backtrace}: {err}");
            assert!(!err.to_ascii_lowercase().contains("backtrace"), "{args:?}: {err}");
        }
    }
}

/// CI builds the workspace once: nextest runs no doc tests, so a `cargo test --doc` step would
/// build every crate again (3.4 of CI's minutes). Every library crate turns doc tests off, and
/// the test script has no doc-test step.
#[test]
fn ci_builds_the_workspace_once() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let workspace: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let members = workspace["workspace"]["members"].as_array().unwrap();
    assert!(members.len() >= 10, "{members:?}");
    for member in members {
        let member = member.as_str().unwrap();
        if !root.join(member).join("src/lib.rs").exists() {
            continue;
        }
        let manifest: toml::Table = toml::from_str(&read(&format!("{member}/Cargo.toml"))).unwrap();
        let doctest = manifest.get("lib").and_then(|l| l.get("doctest")).and_then(|d| d.as_bool());
        assert_eq!(doctest, Some(false), "{member}/Cargo.toml: [lib] doctest = false");
    }
    let script = read("scripts/test.sh");
    assert!(
        !script.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("--doc")),
        "scripts/test.sh runs doc tests"
    );
}
