//! SDK protocol behaviours against a tiny scripted server on a loopback socket: login refusal,
//! resend after a dropped connection, the duplicate-login kick, gap sync, the persisted outbox.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_proto::v1::{self, ErrorCode, KickReason, envelope::Body};
use tern_proto::{FrameDecoder, encode_frame};
use tern_sdk::{
    Client, ClientConfig, Event, MemoryPersistence, PendingSend, Persistence, SdkError, Target,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Failure guard only: every wait in these tests ends long before this unless something is
/// broken.
const GUARD: Duration = Duration::from_secs(10);

async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

struct FakeConn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FakeConn {
    async fn accept(listener: &TcpListener) -> FakeConn {
        let (stream, _) = guard("a connection", listener.accept()).await.unwrap();
        FakeConn { stream, buf: BytesMut::new(), decoder: FrameDecoder::default() }
    }

    /// Accepts a connection and answers its Login with LoginOk for alice/phone.
    async fn accept_login(listener: &TcpListener) -> FakeConn {
        let mut c = FakeConn::accept(listener).await;
        let login = c.recv().await.expect("a Login frame");
        assert!(matches!(login.body, Some(Body::Login(_))), "first frame: {login:?}");
        c.send(v1::Envelope {
            request_id: login.request_id,
            body: Some(Body::LoginOk(v1::LoginOk {
                user_id: "alice".into(),
                device_id: "phone".into(),
                heartbeat_interval_ms: 30_000,
                idle_timeout_ms: 90_000,
                max_frame_bytes: 65_536,
                server_time_ms: 0,
                connection_id: "1".into(),
                token_expires_at_ms: 0,
            })),
        })
        .await;
        c
    }

    async fn recv(&mut self) -> Option<v1::Envelope> {
        loop {
            if let Some(env) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(env);
            }
            let n = guard("a frame", self.stream.read_buf(&mut self.buf)).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, env: v1::Envelope) {
        let mut out = BytesMut::new();
        encode_frame(&env, 1 << 20, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn push(&mut self, body: Body) {
        self.send(v1::Envelope { request_id: 0, body: Some(body) }).await;
    }

    /// The next request that is not a ListConversations or Ping (those get an empty list and a
    /// Pong).
    async fn next_request(&mut self) -> v1::Envelope {
        loop {
            let env = self.recv().await.expect("a request");
            let reply = match &env.body {
                Some(Body::ListConversations(_)) => Body::ConversationList(v1::ConversationList {
                    conversations: Vec::new(),
                    has_more: false,
                }),
                Some(Body::Ping(_)) => Body::Pong(v1::Pong { server_time_ms: 0 }),
                _ => return env,
            };
            self.send(v1::Envelope { request_id: env.request_id, body: Some(reply) }).await;
        }
    }
}

fn message(seq: u64) -> v1::Message {
    v1::Message {
        conversation_id: "dm:alice:bob".into(),
        seq,
        sender_user_id: "bob".into(),
        sender_device_id: "laptop".into(),
        client_msg_id: format!("bob-{seq}"),
        kind: v1::MessageKind::Normal as i32,
        content_type: "text/plain".into(),
        body: format!("hello {seq}").into_bytes().into(),
        ..Default::default()
    }
}

fn deliver(seq: u64) -> Body {
    Body::Deliver(v1::Deliver { message: Some(message(seq)) })
}

async fn setup() -> (TcpListener, ClientConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, ClientConfig::new(addr, "token"))
}

async fn next_event(events: &mut tokio::sync::mpsc::Receiver<Event>) -> Event {
    guard("an event", events.recv()).await.expect("the event channel closed")
}

#[tokio::test]
async fn refused_login_is_returned_by_connect() {
    let (listener, cfg) = setup().await;
    let server = tokio::spawn(async move {
        let mut c = FakeConn::accept(&listener).await;
        let login = c.recv().await.unwrap();
        match login.body {
            Some(Body::Login(l)) => assert_eq!(l.protocol_version, tern_proto::PROTOCOL_VERSION),
            other => panic!("expected Login, got {other:?}"),
        }
        c.send(tern_proto::session::server::error(
            login.request_id,
            ErrorCode::BadToken,
            "bad signature",
            true,
        ))
        .await;
    });
    let err = guard("connect", Client::connect(cfg, Arc::new(MemoryPersistence::new())))
        .await
        .unwrap_err();
    match err {
        SdkError::Login { code, message } => {
            assert_eq!(code, ErrorCode::BadToken);
            assert_eq!(message, "bad signature");
        }
        other => panic!("expected a login error, got {other:?}"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn send_is_resent_with_the_same_id_after_the_connection_drops() {
    let (listener, cfg) = setup().await;
    let persistence = MemoryPersistence::new();
    let server = tokio::spawn(async move {
        let mut c1 = FakeConn::accept_login(&listener).await;
        let first = c1.next_request().await;
        let Some(Body::Send(s1)) = first.body else { panic!("expected Send, got {first:?}") };
        assert_eq!(s1.peer_user_id, "bob");
        drop(c1); // No ack: the client must reconnect and resend.

        let mut c2 = FakeConn::accept_login(&listener).await;
        let again = c2.next_request().await;
        let Some(Body::Send(s2)) = again.body else { panic!("expected Send, got {again:?}") };
        assert_eq!(s2.client_msg_id, s1.client_msg_id);
        assert_eq!(s2.body, s1.body);
        c2.send(v1::Envelope {
            request_id: again.request_id,
            body: Some(Body::SendAck(v1::SendAck {
                conversation_id: "dm:alice:bob".into(),
                seq: 1,
                server_time_ms: 5,
                client_msg_id: s2.client_msg_id.clone(),
                duplicate: true,
            })),
        })
        .await;
        // Keep the connection open until the client is done.
        while c2.recv().await.is_some() {}
        s2.client_msg_id
    });

    let (client, mut events) =
        guard("connect", Client::connect(cfg, Arc::new(persistence.clone()))).await.unwrap();
    assert_eq!(client.user_id(), "alice");
    let ack = guard(
        "the ack",
        client.send(Target::Peer("bob".into()), "text/plain", Bytes::from_static(b"hi")),
    )
    .await
    .unwrap();
    assert_eq!((ack.conversation_id.as_str(), ack.seq), ("dm:alice:bob", 1));
    assert!(persistence.list_pending().unwrap().is_empty(), "acked send left the outbox");
    assert_eq!(persistence.load_cursors().unwrap().get("dm:alice:bob"), Some(&1));

    assert!(matches!(next_event(&mut events).await, Event::Connected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    assert!(matches!(next_event(&mut events).await, Event::Connected { .. }));
    client.close().await;
    assert_eq!(guard("the server", server).await.unwrap(), ack.client_msg_id);
    // Own acked sends are not echoed as events; the channel closes with the client.
    assert_eq!(guard("channel end", events.recv()).await, None);
}

#[tokio::test]
async fn duplicate_login_kick_stops_the_client() {
    let (listener, cfg) = setup().await;
    let server = tokio::spawn(async move {
        let mut c = FakeConn::accept_login(&listener).await;
        c.push(Body::Kick(v1::Kick {
            reason: KickReason::DuplicateLogin as i32,
            message: "logged in elsewhere".into(),
        }))
        .await;
        // The connection closes here; the task must not come back.
        drop(c);
    });
    let (client, mut events) =
        guard("connect", Client::connect(cfg, Arc::new(MemoryPersistence::new()))).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected { .. }));
    assert_eq!(next_event(&mut events).await, Event::Kicked { reason: KickReason::DuplicateLogin });
    // The task ended (it held the sender), so nothing reconnects.
    assert_eq!(guard("channel end", events.recv()).await, None);
    let err = client.send(Target::Peer("bob".into()), "text/plain", Bytes::new()).await;
    assert!(matches!(err, Err(SdkError::Closed)), "{err:?}");
    client.close().await;
    guard("the server", server).await.unwrap();
}

#[tokio::test]
async fn a_gap_in_pushes_is_synced_and_released_in_order_without_duplicates() {
    let (listener, cfg) = setup().await;
    let persistence = MemoryPersistence::new();
    let server = tokio::spawn(async move {
        let mut c = FakeConn::accept_login(&listener).await;
        c.push(deliver(1)).await;
        c.push(deliver(3)).await;
        let req = c.next_request().await;
        let Some(Body::SyncRequest(sync)) = req.body else { panic!("expected sync, got {req:?}") };
        assert_eq!((sync.conversation_id.as_str(), sync.from_seq), ("dm:alice:bob", 2));
        c.send(v1::Envelope {
            request_id: req.request_id,
            body: Some(Body::SyncPage(v1::SyncPage {
                conversation_id: "dm:alice:bob".into(),
                messages: vec![message(2), message(3)],
                missing: vec![v1::SeqRange { first: 4, last: 5 }],
                next_from_seq: 6,
                has_more: false,
                last_seq: 5,
            })),
        })
        .await;
        c.push(deliver(3)).await; // duplicate
        c.push(deliver(6)).await;
        while c.recv().await.is_some() {}
    });
    let (client, mut events) =
        guard("connect", Client::connect(cfg, Arc::new(persistence.clone()))).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected { .. }));
    let mut seqs = Vec::new();
    while seqs.len() < 4 {
        match next_event(&mut events).await {
            Event::Message(m) => seqs.push(m.seq),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2, 3, 6]);
    assert_eq!(persistence.load_cursors().unwrap().get("dm:alice:bob"), Some(&6));
    client.close().await;
    guard("the server", server).await.unwrap();
}

#[tokio::test]
async fn persisted_sends_are_resent_at_connect_and_show_up_as_events() {
    let (listener, cfg) = setup().await;
    let persistence = MemoryPersistence::new();
    persistence
        .put_pending(&PendingSend {
            mention_user_ids: Vec::new(),
            mention_all: false,
            client_msg_id: "left-over".into(),
            target: Target::Conversation("dm:alice:bob".into()),
            content_type: "text/plain".into(),
            body: Bytes::from_static(b"from before the restart"),
        })
        .unwrap();
    let server = tokio::spawn(async move {
        let mut c = FakeConn::accept_login(&listener).await;
        let req = c.next_request().await;
        let Some(Body::Send(s)) = req.body else { panic!("expected Send, got {req:?}") };
        assert_eq!(s.client_msg_id, "left-over");
        assert_eq!(s.conversation_id, "dm:alice:bob");
        c.send(v1::Envelope {
            request_id: req.request_id,
            body: Some(Body::SendAck(v1::SendAck {
                conversation_id: "dm:alice:bob".into(),
                seq: 1,
                server_time_ms: 7,
                client_msg_id: s.client_msg_id,
                duplicate: false,
            })),
        })
        .await;
        while c.recv().await.is_some() {}
    });
    let (client, mut events) =
        guard("connect", Client::connect(cfg, Arc::new(persistence.clone()))).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected { .. }));
    match next_event(&mut events).await {
        Event::Message(m) => {
            assert_eq!((m.seq, m.client_msg_id.as_str()), (1, "left-over"));
            assert_eq!(m.sender_user_id, "alice");
            assert_eq!(&m.body[..], b"from before the restart");
        }
        other => panic!("expected the own message, got {other:?}"),
    }
    assert!(persistence.list_pending().unwrap().is_empty());
    client.close().await;
    guard("the server", server).await.unwrap();
}
