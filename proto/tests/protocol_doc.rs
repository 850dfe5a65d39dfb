//! Keeps docs/PROTOCOL.md honest: its byte-level examples must be what the codec writes.

use tern_proto::v1::{self, envelope::Body};
use tern_proto::{DEFAULT_MAX_FRAME_BYTES, encode_to_bytes};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => panic!("cannot read {path}: {e}"),
    }
}

/// The bytes of the annotated hex block after `<!-- hex:NAME -->`: on each line, the
/// whitespace-separated hex byte pairs before `//`.
fn documented_bytes(doc: &str, name: &str) -> Vec<u8> {
    let marker = format!("<!-- hex:{name} -->");
    let Some(start) = doc.find(&marker) else {
        panic!("docs/PROTOCOL.md has no {marker}");
    };
    let rest = &doc[start + marker.len()..];
    let Some(end) = rest.find("<!-- /hex -->") else {
        panic!("{marker} is not closed by <!-- /hex -->");
    };
    let mut bytes = Vec::new();
    for line in rest[..end].lines() {
        let line = line.trim();
        if line.starts_with("```") || line.is_empty() {
            continue;
        }
        let hex = line.split("//").next().unwrap_or_default();
        for token in hex.split_whitespace() {
            match u8::from_str_radix(token, 16) {
                Ok(b) if token.len() == 2 => bytes.push(b),
                _ => panic!("{name}: {token:?} is not a hex byte in line {line:?}"),
            }
        }
    }
    bytes
}

fn frame(env: &v1::Envelope) -> Vec<u8> {
    match encode_to_bytes(env, DEFAULT_MAX_FRAME_BYTES) {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("{e}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_documented(name: &str, env: &v1::Envelope) {
    let doc = doc();
    let expected = frame(env);
    assert_eq!(
        hex(&documented_bytes(&doc, name)),
        hex(&expected),
        "docs/PROTOCOL.md example {name:?} is stale"
    );
    // The one-line form given under each example.
    let line = format!("`{}`", hex(&expected));
    assert!(doc.contains(&line), "docs/PROTOCOL.md lacks the whole-frame line {line}");
}

#[test]
fn login_example_matches_the_codec() {
    assert_documented(
        "login",
        &v1::Envelope {
            request_id: 1,
            body: Some(Body::Login(v1::Login {
                token: "abc.def.ghi".into(),
                protocol_version: 1,
                client_version: "kt/1.0".into(),
                ..Default::default()
            })),
        },
    );
}

#[test]
fn send_example_matches_the_codec() {
    assert_documented(
        "send",
        &v1::Envelope {
            request_id: 2,
            body: Some(Body::Send(v1::Send {
                mention_user_ids: Vec::new(),
                mention_all: false,
                conversation_id: "dm:alice:bob".into(),
                peer_user_id: String::new(),
                client_msg_id: "m1".into(),
                content_type: "text/plain".into(),
                body: b"hi".to_vec().into(),
            })),
        },
    );
}

#[test]
fn documented_defaults_match_the_code() {
    let doc = doc();
    let cfg = tern_proto::session::server::ServerSessionConfig::default();
    for (what, value) in [
        ("max_frame_bytes", cfg.max_frame_bytes.to_string()),
        ("login_timeout_ms", cfg.login_timeout.as_millis().to_string()),
        ("heartbeat_interval_ms", cfg.heartbeat_interval.as_millis().to_string()),
        ("idle_timeout_ms", cfg.idle_timeout.as_millis().to_string()),
        ("max_id_bytes", tern_proto::ids::MAX_ID_BYTES.to_string()),
        ("max_client_msg_id_bytes", tern_proto::ids::MAX_CLIENT_MSG_ID_BYTES.to_string()),
    ] {
        let row = format!("| `{what}` | {value} |");
        assert!(doc.contains(&row), "docs/PROTOCOL.md limits table lacks {row:?}");
    }
}
