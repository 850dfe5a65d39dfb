//! The I/O loop of one client connection: reads frames, feeds them to the sans-IO
//! [`ServerSession`], carries out its actions, and runs a writer task that drains the
//! connection's [`Outbound`] queue. The loop holds no read buffer while the connection is idle.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tern_proto::FrameDecoder;
use tern_proto::session::server::{Action, CloseReason, ServerSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Semaphore;

use crate::outbound::Outbound;
use crate::registry::{Conn, encode};
use crate::server::Gateway;
use crate::upstream::{RequestCtx, Upstream};

/// Bytes reserved for one read.
const READ_CHUNK: usize = 4096;
/// Longest wait for the upstream to make a new login reachable before LoginOk goes out.
const LOGIN_PUBLISH_WAIT: Duration = Duration::from_secs(2);
/// After closing, how long unread input is drained so the last frame is not lost to a reset.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Wall clock in Unix milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs one connection to completion.
pub async fn run<U: Upstream>(gw: Arc<Gateway<U>>, stream: TcpStream, connection_id: u64) {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let outbound = Arc::new(Outbound::default());
    let mut writer = tokio::spawn(write_loop(wr, outbound.clone()));
    let mut driver = Driver {
        session: ServerSession::new(Instant::now(), connection_id, &gw.cfg.session),
        ctx: None,
        inflight: Arc::new(Semaphore::new(gw.cfg.max_inflight_requests)),
        outbound: outbound.clone(),
        connection_id,
        gw: gw.clone(),
    };
    let mut decoder = FrameDecoder::new(gw.cfg.session.max_frame_bytes);
    let mut buf = BytesMut::new();
    let mut writer_done = false;
    'conn: loop {
        let deadline = driver.session.deadline(&gw.cfg.session);
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break 'conn,
                Ok(_) => {}
            },
            _ = sleep_until(deadline) => {
                let action = driver.session.on_tick(Instant::now(), &gw.cfg.session);
                if !driver.apply(action).await {
                    break 'conn;
                }
                continue 'conn;
            }
            _ = &mut writer => { writer_done = true; break 'conn; }
        }
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(env)) => {
                    gw.metrics.frames_in.fetch_add(1, Relaxed);
                    let action = driver.session.on_frame(
                        Instant::now(),
                        unix_ms(),
                        env,
                        &gw.cfg.session,
                        &*gw.auth,
                    );
                    if !driver.apply(action).await {
                        break 'conn;
                    }
                }
                Err(e) => {
                    tracing::debug!(connection_id, error = %e, "bad frame");
                    let action = driver.session.on_decode_error(&e);
                    driver.apply(action).await;
                    break 'conn;
                }
            }
        }
        if buf.is_empty() {
            // Idle: give the read buffer back.
            buf = BytesMut::new();
        }
    }
    // Closing: unregister, let the writer flush what is queued (a Kick or Error), and drain
    // input meanwhile so that closing with unread input does not reset the connection before
    // the client read the last frame.
    if let Some(ctx) = &driver.ctx {
        gw.registry.unregister(&ctx.user_id, connection_id);
        gw.upstream.disconnected(ctx);
    }
    outbound.close_with(None);
    drop(buf);
    if !writer_done {
        let mut scratch = [0u8; 1024];
        let linger = tokio::time::sleep(CLOSE_LINGER);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                _ = &mut writer => break,
                _ = &mut linger => { writer.abort(); break; }
                r = rd.read(&mut scratch) => if matches!(r, Ok(0) | Err(_)) {
                    // Peer gone: the writer will fail or finish on its own.
                    let _ = tokio::time::timeout(CLOSE_LINGER, &mut writer).await;
                    break;
                },
            }
        }
    }
    if driver.ctx.is_none() {
        // Closed before logging in: no longer pending.
        gw.metrics.logins_pending.fetch_sub(1, Relaxed);
    }
    gw.metrics.connections_open.fetch_sub(1, Relaxed);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Carries out session actions for one connection.
struct Driver<U: Upstream> {
    session: ServerSession,
    ctx: Option<Arc<RequestCtx>>,
    inflight: Arc<Semaphore>,
    outbound: Arc<Outbound>,
    connection_id: u64,
    gw: Arc<Gateway<U>>,
}

impl<U: Upstream> Driver<U> {
    /// Returns false when the connection must close.
    async fn apply(&mut self, action: Action) -> bool {
        let gw = &self.gw;
        match action {
            Action::None => true,
            Action::Reply(env) => {
                if let Some(frame) = encode(env) {
                    gw.registry.queue(&self.outbound, frame);
                }
                !self.outbound.is_closing()
            }
            Action::LoggedIn { identity, reply } => {
                gw.metrics.logins_ok.fetch_add(1, Relaxed);
                gw.metrics.logins_pending.fetch_sub(1, Relaxed);
                let ctx = Arc::new(RequestCtx {
                    user_id: identity.user_id,
                    device_id: identity.device_id,
                    connection_id: self.connection_id,
                });
                gw.registry.register(
                    &ctx.user_id,
                    Arc::new(Conn {
                        id: self.connection_id,
                        device_id: ctx.device_id.clone(),
                        outbound: self.outbound.clone(),
                    }),
                );
                // Reachable for pushes before the client hears LoginOk (bounded: a presence
                // outage delays logins by at most this, then the refresh catches up).
                let _ = tokio::time::timeout(LOGIN_PUBLISH_WAIT, gw.upstream.connected(&ctx)).await;
                if let Some(frame) = encode(reply) {
                    gw.registry.queue(&self.outbound, frame);
                }
                tracing::debug!(connection_id = self.connection_id, user = %ctx.user_id, device = %ctx.device_id, "logged in");
                self.ctx = Some(ctx);
                true
            }
            Action::Forward(env) => {
                let Some(ctx) = &self.ctx else { return false };
                // Back-pressure: stop reading this connection while too many of its requests
                // are in flight.
                let Ok(permit) = self.inflight.clone().acquire_owned().await else {
                    return false;
                };
                let answer = gw.upstream.request(ctx, env);
                let outbound = self.outbound.clone();
                let gw = gw.clone();
                tokio::spawn(async move {
                    let reply = answer.await;
                    if let Some(frame) = encode(reply) {
                        gw.registry.queue(&outbound, frame);
                    }
                    drop(permit);
                });
                true
            }
            Action::Close { reply, reason } => {
                let counter = match reason {
                    CloseReason::BadFrame | CloseReason::NotLoggedIn => &gw.metrics.bad_frames,
                    CloseReason::AuthFailed | CloseReason::UnsupportedVersion => {
                        &gw.metrics.logins_failed
                    }
                    CloseReason::LoginTimeout => &gw.metrics.login_timeouts,
                    CloseReason::IdleTimeout => &gw.metrics.idle_timeouts,
                    CloseReason::RateLimited => &gw.metrics.rate_limit_closes,
                };
                counter.fetch_add(1, Relaxed);
                tracing::debug!(connection_id = self.connection_id, ?reason, "closing");
                self.outbound.close_with(reply.and_then(encode));
                false
            }
        }
    }
}

/// Writes queued frames until the queue closes or the socket fails.
async fn write_loop(mut wr: OwnedWriteHalf, outbound: Arc<Outbound>) {
    let mut coalesce = Vec::new();
    loop {
        let batch = outbound.next_batch().await;
        let ok = if batch.frames.len() == 1 {
            wr.write_all(&batch.frames[0]).await.is_ok()
        } else {
            coalesce.clear();
            for f in &batch.frames {
                coalesce.extend_from_slice(f);
            }
            let ok = wr.write_all(&coalesce).await.is_ok();
            if coalesce.capacity() > 64 * 1024 {
                coalesce = Vec::new();
            }
            ok
        };
        if !ok {
            outbound.close_with(None);
            return;
        }
        if batch.close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}
