//! `tern chat`: a terminal chat client on the SDK, so that two terminals can talk through a
//! running server. Lines you type go to the current peer; `/help` lists the commands.
//!
//! Its cursors and unacknowledged sends are kept in `<data_dir>/chat/<user>-<device>.json`
//! ([`tern_sdk::FilePersistence`]), so that a restarted chat shows only what is new.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tern_proto::v1::{self, MessageKind};
use tern_proto::v1::{ErrorCode, KickReason};
use tern_sdk::{Client, ClientConfig, Event, FilePersistence, SdkError, Target};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::Config;

/// `tern chat` arguments.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Server address; defaults to the configured `server.listen`.
    #[arg(long)]
    pub addr: Option<String>,
    /// Login token (e.g. from `tern token`). Alternatively `--user`.
    #[arg(long, env = "TERN_TOKEN", conflicts_with = "user")]
    pub token: Option<String>,
    /// Development shortcut: mint a token for this user with the server's key (read from the
    /// configuration or the data directory, like `tern token`).
    #[arg(long)]
    pub user: Option<String>,
    /// Device id used with `--user`.
    #[arg(long, default_value = "cli")]
    pub device: String,
    /// Who to talk to first (change with `/to USER`).
    #[arg(long)]
    pub to: Option<String>,
    /// Certificates accepted over tls:// and quic://.
    #[command(flatten)]
    pub trust: crate::tls::TrustArgs,
}

const HELP: &str = "commands: /to USER (talk to USER) · /recall SEQ · /list · /history [N] · /quit\n\
anything else is sent to the current peer";

/// Runs the chat until `/quit` or end of input.
pub async fn run(cfg: &Config, args: ChatArgs) -> anyhow::Result<()> {
    let (token, user, device) = match (&args.token, &args.user) {
        (Some(t), _) => {
            let (user, device) = token_subject(t)
                .context("--token: not a login token (a JWT whose payload has `sub` and `did`)")?;
            (t.clone(), user, device)
        }
        (None, Some(user)) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
            let token = cfg.existing_token_key()?.mint_for(user, &args.device, now, 24 * 3600);
            (token, user.clone(), args.device.clone())
        }
        (None, None) => anyhow::bail!("give --token TOKEN (see `tern token`) or --user USER"),
    };
    if !tern_proto::ids::is_valid_id(&user) || !tern_proto::ids::is_valid_id(&device) {
        anyhow::bail!("user and device ids: 1-128 characters of letters, digits, _ . @ -");
    }
    let state = cfg.server.data_dir.join("chat").join(format!("{user}-{device}.json"));
    let persistence = FilePersistence::open(&state)?;
    let addr = args.addr.clone().unwrap_or_else(|| cfg.server.listen.to_string());
    let mut client_cfg = ClientConfig::new(addr.clone(), token);
    client_cfg.trust = args.trust.trust(cfg);
    let (client, mut events) = match Client::connect(client_cfg, Arc::new(persistence)).await {
        Ok(c) => c,
        Err(SdkError::Login { code: ErrorCode::BadToken, message }) => {
            let whose = if args.user.is_none() {
                "the key it was minted with".to_owned()
            } else if cfg.auth.hs256_key.is_empty() {
                format!("the key in {}", cfg.key_file().display())
            } else {
                "auth.hs256_key".to_owned()
            };
            anyhow::bail!(
                "the server at {addr} refused the token ({message}): it was signed with \
                     {whose}, and the server uses another key. Run the chat with the server's \
                     configuration (its directory, or --data-dir DIR / -c CONFIG), or pass \
                     --token with a token minted with the server's key"
            );
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
    };
    let me = client.user_id().to_owned();
    println!("connected to {addr} as {me}. {HELP}");
    let mut peer = args.to.clone();
    if let Some(p) = &peer {
        println!("talking to {p}");
    }

    let printer = {
        let client = client.clone();
        let me = me.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Message(m) => {
                        print_message(&m);
                        if m.sender_user_id != me {
                            let _ = client.mark_read(&m.conversation_id, m.seq).await;
                        }
                    }
                    Event::Receipt(r) if r.user_id != me => {
                        println!(
                            "  · {} read up to #{} in {}",
                            r.user_id, r.read_seq, r.conversation_id
                        )
                    }
                    Event::Receipt(_) => {}
                    Event::Connected { .. } => println!("  · connected"),
                    Event::Disconnected { reason } => {
                        println!("  · disconnected ({reason}), reconnecting")
                    }
                    // The client reconnects after any other kick (a server restart is
                    // SERVER_SHUTDOWN) and its events keep coming.
                    Event::Kicked { reason: KickReason::DuplicateLogin } => {
                        println!("  · kicked: this user and device logged in elsewhere; stopping")
                    }
                    Event::Kicked { reason } => println!("  · kicked by the server: {reason:?}"),
                }
            }
        })
    };
    tokio::pin!(printer);

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => line,
                None => break,
            },
            // The event stream ends only when the client stopped for good (duplicate login,
            // token refused at a reconnect).
            _ = &mut printer => {
                println!("  · the connection stopped; bye");
                break;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.splitn(2, ' ');
        match (words.next().unwrap_or(""), words.next().map(str::trim)) {
            ("/quit", _) => break,
            ("/help", _) => println!("{HELP}"),
            ("/to", Some(user)) => {
                peer = Some(user.to_owned());
                println!("talking to {user}");
            }
            ("/list", _) => match client.list_conversations().await {
                Ok(list) => {
                    for c in list {
                        println!(
                            "  {} last #{} read #{}",
                            c.conversation_id, c.last_seq, c.read_seq
                        );
                    }
                }
                Err(e) => println!("  ! {e}"),
            },
            ("/history", n) => {
                let Some(p) = &peer else {
                    println!("  ! choose a peer first: /to USER");
                    continue;
                };
                let n: u64 = n.and_then(|n| n.parse().ok()).unwrap_or(20);
                let Some(conv) = tern_proto::ids::direct_conversation_id(&me, p) else { continue };
                let last = client
                    .list_conversations()
                    .await
                    .ok()
                    .and_then(|l| l.into_iter().find(|c| c.conversation_id == conv))
                    .map_or(0, |c| c.last_seq);
                match client.sync_page(&conv, last.saturating_sub(n) + 1, n as u32).await {
                    Ok(page) => page.messages.iter().for_each(print_message),
                    Err(e) => println!("  ! {e}"),
                }
            }
            ("/recall", Some(seq)) => {
                let (Some(p), Ok(seq)) = (&peer, seq.parse::<u64>()) else {
                    println!("  ! usage: /recall SEQ (with a peer chosen)");
                    continue;
                };
                let Some(conv) = tern_proto::ids::direct_conversation_id(&me, p) else { continue };
                match client.recall(&conv, seq).await {
                    Ok(ack) => println!("  · recalled #{seq} (event #{})", ack.seq),
                    Err(e) => println!("  ! {e}"),
                }
            }
            (cmd, _) if cmd.starts_with('/') => println!("  ! unknown command. {HELP}"),
            _ => {
                let Some(p) = &peer else {
                    println!("  ! choose a peer first: /to USER");
                    continue;
                };
                match client
                    .send(
                        Target::Peer(p.clone()),
                        "text/plain",
                        Bytes::copy_from_slice(line.as_bytes()),
                    )
                    .await
                {
                    Ok(ack) => println!("  ✓ #{} {}", ack.seq, ack.conversation_id),
                    Err(e) => println!("  ! not sent: {e}"),
                }
            }
        }
    }
    client.close().await;
    printer.abort();
    Ok(())
}

/// The user and device a token names (`sub`, `did`), read without checking the signature:
/// only to name the chat's state file.
fn token_subject(token: &str) -> Option<(String, String)> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Subject {
        sub: String,
        did: String,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let s: Subject = serde_json::from_slice(&json).ok()?;
    Some((s.sub, s.did))
}

fn print_message(m: &v1::Message) {
    let who = format!("{}/{}", m.sender_user_id, m.sender_device_id);
    match MessageKind::try_from(m.kind).unwrap_or_default() {
        MessageKind::Recall => {
            println!("[{} #{}] {who} recalled #{}", m.conversation_id, m.seq, m.recalled_seq)
        }
        _ if m.recalled => println!("[{} #{}] {who}: (recalled)", m.conversation_id, m.seq),
        _ => println!(
            "[{} #{}] {who}: {}",
            m.conversation_id,
            m.seq,
            String::from_utf8_lossy(&m.body)
        ),
    }
}
