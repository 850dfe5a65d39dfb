//! The floor of the message path (issue 9): the least a durable server can do for
//! `tern-loadtest pairs`, to measure what the protocol itself costs on this machine.
//!
//! One thread, one epoll loop, no hand-offs: each poll round reads every ready connection,
//! decodes its frames, appends every Send and Receipt to a log file, writes that log with one
//! `write` and one `fdatasync` (skipped with `--no-fsync`), and only then writes every answer
//! (SendAck, the Deliver, the receipt's ReceiptUpdate and the sender's) with one `write` per
//! connection (`--window-us N`: at most one sync per N µs, later records wait). A Login's
//! token is checked with the gateway's own [`TokenKey`] (`--key`, as `pairs` takes it; logins
//! fall outside the measured window); a bad one is not answered. There is no sync, no dedupe,
//! no index, no recovery: it is not a server, it is a lower bound.
//!
//! ```sh
//! cargo run --release -p tern-loadtest --example floor_server -- 127.0.0.1:7500 /tmp/floor.log --key "$KEY"
//! tern-loadtest pairs --addr 127.0.0.1:7500 --key "$KEY" --rate 2000 --server-pid <pid>
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use tern_gateway::TokenKey;
use tern_proto::v1::envelope::Body;
use tern_proto::v1::{Deliver, Envelope, LoginOk, Message, ReceiptUpdate, SendAck};
use tern_proto::{DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    user: Option<String>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

fn peer_of<'a>(conv: &'a str, me: &str) -> Option<&'a str> {
    let rest = conv.strip_prefix("dm:")?;
    let (a, b) = rest.split_once(':')?;
    Some(if a == me { b } else { a })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7500".into()).parse()?;
    let log_path = args.next().unwrap_or_else(|| "/tmp/floor.log".into());
    let rest: Vec<String> = args.collect();
    let fsync = !rest.iter().any(|a| a == "--no-fsync");
    // `--window-us N`: at most one sync per N µs; records that arrive sooner wait for it (the
    // group commit window: fewer syncs, up to N µs more latency).
    let key = rest
        .iter()
        .position(|a| a == "--key")
        .and_then(|i| rest.get(i + 1))
        .ok_or_else(|| anyhow::anyhow!("--key <base64 HS256 key> is required"))?;
    let key = TokenKey::from_base64(key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let window = rest
        .iter()
        .position(|a| a == "--window-us")
        .and_then(|i| rest.get(i + 1)?.parse().ok())
        .map(Duration::from_micros)
        .unwrap_or_default();
    let log = File::create(&log_path)?;
    let mut log_at = 0u64;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("floor_server listening on {addr}, log {log_path}, fsync {fsync}, window {window:?}");

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut by_user: HashMap<String, usize> = HashMap::new();
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut events = Events::with_capacity(1024);
    let dec = FrameDecoder::default();
    let mut record = Vec::new();
    let mut dirty: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut open, mut syncs, mut records) = (0usize, 0u64, 0u64);
    // Answers wait in `pending` until the log holding their records is synced.
    let mut pending: Vec<(usize, Envelope)> = Vec::new();
    let mut last_sync = Instant::now();
    loop {
        let timeout = (!record.is_empty()).then(|| window.saturating_sub(last_sync.elapsed()));
        poll.poll(&mut events, timeout)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut sock, _)) = listener.accept() {
                    let _ = sock.set_nodelay(true);
                    let i = conns.len();
                    poll.registry().register(&mut sock, Token(i), Interest::READABLE)?;
                    conns.push(Some(Conn { sock, user: None, inbuf: Vec::new(), out: Vec::new() }));
                    open += 1;
                }
                continue;
            }
            let i = ev.token().0;
            let Some(Some(c)) = conns.get_mut(i) else { continue };
            let mut closed = false;
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let mut used = 0;
            while let Ok(Some((env, n))) = dec.decode_slice(&c.inbuf[used..]) {
                used += n;
                let id = env.request_id;
                match env.body {
                    Some(Body::Login(l)) => {
                        let now_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i64);
                        let Ok(claims) = key.verify(&l.token, now_ms) else { continue };
                        let user = claims.sub;
                        by_user.insert(user.clone(), i);
                        c.user = Some(user.clone());
                        let ok =
                            LoginOk { user_id: user, device_id: "d".into(), ..Default::default() };
                        pending
                            .push((i, Envelope { request_id: id, body: Some(Body::LoginOk(ok)) }));
                    }
                    Some(Body::Send(s)) => {
                        let me = c.user.clone().unwrap_or_default();
                        let seq = seqs.entry(s.conversation_id.clone()).or_default();
                        *seq += 1;
                        records += 1;
                        record.extend_from_slice(&(s.body.len() as u32).to_le_bytes());
                        record.extend_from_slice(s.conversation_id.as_bytes());
                        record.extend_from_slice(&seq.to_le_bytes());
                        record.extend_from_slice(&s.body);
                        let ack = SendAck {
                            conversation_id: s.conversation_id.clone(),
                            seq: *seq,
                            client_msg_id: s.client_msg_id.clone(),
                            ..Default::default()
                        };
                        pending
                            .push((i, Envelope { request_id: id, body: Some(Body::SendAck(ack)) }));
                        if let Some(&r) =
                            peer_of(&s.conversation_id, &me).and_then(|p| by_user.get(p))
                        {
                            let m = Message {
                                conversation_id: s.conversation_id,
                                seq: *seq,
                                sender_user_id: me,
                                sender_device_id: "d".into(),
                                client_msg_id: s.client_msg_id,
                                content_type: s.content_type,
                                body: s.body,
                                ..Default::default()
                            };
                            let d = Deliver { message: Some(m) };
                            pending.push((
                                r,
                                Envelope { request_id: 0, body: Some(Body::Deliver(d)) },
                            ));
                        }
                    }
                    Some(Body::Receipt(r)) => {
                        let me = c.user.clone().unwrap_or_default();
                        records += 1;
                        record.extend_from_slice(r.conversation_id.as_bytes());
                        record.extend_from_slice(&r.seq.to_le_bytes());
                        let up = ReceiptUpdate {
                            conversation_id: r.conversation_id.clone(),
                            user_id: me.clone(),
                            delivered_seq: r.seq,
                            read_seq: 0,
                        };
                        if let Some(&s) =
                            peer_of(&r.conversation_id, &me).and_then(|p| by_user.get(p))
                        {
                            let push = Envelope {
                                request_id: 0,
                                body: Some(Body::ReceiptUpdate(up.clone())),
                            };
                            pending.push((s, push));
                        }
                        pending.push((
                            i,
                            Envelope { request_id: id, body: Some(Body::ReceiptUpdate(up)) },
                        ));
                    }
                    _ => {}
                }
            }
            c.inbuf.drain(..used);
            if closed && let Some(Some(mut c)) = conns.get_mut(i).map(Option::take) {
                let _ = poll.registry().deregister(&mut c.sock);
                open -= 1;
                if open == 0 {
                    // The run is over: what it cost in syncs.
                    eprintln!(
                        "floor_server: {records} records (sends + receipts), {syncs} log writes"
                    );
                }
            }
        }
        if !record.is_empty() && last_sync.elapsed() < window {
            continue;
        }
        if !record.is_empty() {
            last_sync = Instant::now();
            log.write_all_at(&record, log_at)?;
            log_at += record.len() as u64;
            record.clear();
            syncs += 1;
            if fsync {
                log.sync_data()?;
            }
        }
        for (i, env) in pending.drain(..) {
            if let Some(Some(c)) = conns.get_mut(i) {
                if c.out.is_empty() {
                    dirty.push(i);
                }
                encode_frame(&env, DEFAULT_MAX_FRAME_BYTES, &mut c.out)?;
            }
        }
        for i in dirty.drain(..) {
            if let Some(Some(c)) = conns.get_mut(i) {
                // Loopback and small answers: a short write does not happen at these rates.
                let _ = c.sock.write_all(&c.out);
                c.out.clear();
            }
        }
    }
}
