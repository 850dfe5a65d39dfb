//! Unit tests of the inbound frame-rate limit (token bucket and the fatal close).

use super::*;

struct Anyone;
impl Authenticator for Anyone {
    fn authenticate(&self, _: &str, _: i64) -> Result<Identity, AuthError> {
        Ok(Identity { user_id: "u".into(), device_id: "d".into() })
    }
}

fn ping(id: u64) -> v1::Envelope {
    v1::Envelope { request_id: id, body: Some(Body::Ping(v1::Ping::default())) }
}

fn is_pong(a: &Action) -> bool {
    matches!(a, Action::Reply(v1::Envelope { body: Some(Body::Pong(_)), .. }))
}

fn is_refusal(a: &Action) -> bool {
    matches!(a, Action::Reply(v1::Envelope { body: Some(Body::Error(e)), .. })
        if e.code == ErrorCode::RateLimited as i32 && !e.fatal)
}

fn logged_in(cfg: &ServerSessionConfig, t0: Instant) -> ServerSession {
    let mut s = ServerSession::new(t0, 1, cfg);
    let login = v1::Envelope { request_id: 1, body: Some(Body::Login(v1::Login::default())) };
    assert!(matches!(s.on_frame(t0, 0, login, cfg, &Anyone), Action::LoggedIn { .. }));
    s
}

/// What a flood of one frame every `gap` did, on a virtual clock.
#[derive(Debug, Default)]
struct Flood {
    accepted: u64,
    refused: u64,
    /// Frames sent until the fatal close (inclusive), if it came.
    closed_after: Option<u64>,
    /// Virtual time from the first frame to the close.
    elapsed: Duration,
}

fn flood(cfg: &ServerSessionConfig, gap: Duration, max_frames: u64) -> Flood {
    let t0 = Instant::now();
    let mut s = logged_in(cfg, t0);
    let mut out = Flood::default();
    for n in 1..=max_frames {
        let now = t0 + gap * (n as u32);
        let action = s.on_frame(now, 0, ping(n), cfg, &Anyone);
        if is_pong(&action) {
            out.accepted += 1;
        } else if is_refusal(&action) {
            out.refused += 1;
        } else {
            let Action::Close { reply: Some(reply), reason: CloseReason::RateLimited } = action
            else {
                panic!("frame {n}: unexpected {action:?}");
            };
            assert_eq!(reply.request_id, n);
            assert!(matches!(reply.body, Some(Body::Error(e))
                if e.code == ErrorCode::RateLimited as i32 && e.fatal));
            assert!(s.is_closed());
            out.closed_after = Some(n);
            out.elapsed = now - t0;
            return out;
        }
    }
    out
}

#[test]
fn a_flood_at_forty_times_the_rate_is_closed_after_one_burst_of_refusals() {
    // 1000 frames/s allowed, 40,000/s sent (one every 25 us) with time advancing: tokens
    // keep arriving (one per ms) and are spent, but refusals are counted since the bucket
    // was last full, so they pass the burst (2000) and the connection closes.
    let cfg = ServerSessionConfig { max_frames_per_sec: 1000, ..Default::default() };
    let f = flood(&cfg, Duration::from_micros(25), 1_000_000);
    let n = f.closed_after.unwrap_or_else(|| panic!("never closed: {f:?}"));
    assert_eq!(f.refused, 2000, "exactly one full burst of non-fatal refusals: {f:?}");
    // The burst of 2000 plus the tokens earned meanwhile (one per ms of flood).
    let earned = f.elapsed.as_millis() as u64;
    assert!(f.accepted >= 2000 && f.accepted <= 2000 + earned + 1, "{f:?}");
    assert_eq!(n, f.accepted + f.refused + 1);
}

#[test]
fn floods_at_many_multiples_of_the_rate_all_reach_the_close() {
    for (rate, per_sec) in [(10u32, 25u64), (100, 1_000), (1000, 2_000), (1000, 100_000)] {
        let cfg = ServerSessionConfig { max_frames_per_sec: rate, ..Default::default() };
        let gap = Duration::from_nanos(1_000_000_000 / per_sec);
        let f = flood(&cfg, gap, 10_000_000);
        assert!(f.closed_after.is_some(), "rate {rate}, {per_sec}/s: {f:?}");
        assert_eq!(f.refused, 2 * u64::from(rate), "rate {rate}, {per_sec}/s: {f:?}");
    }
}

#[test]
fn a_client_at_its_rate_is_never_refused() {
    let cfg = ServerSessionConfig { max_frames_per_sec: 100, ..Default::default() };
    let f = flood(&cfg, Duration::from_millis(10), 100_000);
    assert_eq!((f.refused, f.closed_after), (0, None), "{f:?}");
}

#[test]
fn refusals_are_forgotten_once_the_bucket_is_full_again() {
    let cfg = ServerSessionConfig { max_frames_per_sec: 10, ..Default::default() };
    let t0 = Instant::now();
    let mut s = logged_in(&cfg, t0);
    let mut id = 1;
    let mut send = |s: &mut ServerSession, at: Instant| {
        id += 1;
        s.on_frame(at, 0, ping(id), &cfg, &Anyone)
    };
    // Burst (20), then 20 refusals: one short of the close.
    for _ in 0..20 {
        assert!(is_pong(&send(&mut s, t0)));
    }
    for _ in 0..20 {
        assert!(is_refusal(&send(&mut s, t0)));
    }
    // 1.9 s of quiet: 19 tokens, not full yet, so the count stands: one more refusal after
    // them closes.
    let t1 = t0 + Duration::from_millis(1900);
    let mut s2 = logged_in(&cfg, t0);
    for _ in 0..20 {
        send(&mut s2, t0);
    }
    for _ in 0..20 {
        send(&mut s2, t0);
    }
    for _ in 0..19 {
        assert!(is_pong(&send(&mut s2, t1)));
    }
    assert!(matches!(send(&mut s2, t1), Action::Close { reason: CloseReason::RateLimited, .. }));
    // 2 s of quiet fills the bucket: the count starts over, a full burst of refusals again.
    let t2 = t0 + Duration::from_secs(2);
    for _ in 0..20 {
        assert!(is_pong(&send(&mut s, t2)));
    }
    for i in 0..20 {
        assert!(is_refusal(&send(&mut s, t2)), "refusal {i} after the refill");
    }
    assert!(matches!(send(&mut s, t2), Action::Close { reason: CloseReason::RateLimited, .. }));
    assert!(s.is_closed());
}

#[test]
fn bucket_refills_with_time() {
    let cfg = ServerSessionConfig { max_frames_per_sec: 10, ..Default::default() };
    let t0 = Instant::now();
    let mut s = logged_in(&cfg, t0);
    // The burst (2 x rate) passes, the next frame is refused but not fatal.
    for i in 1..=20 {
        assert!(is_pong(&s.on_frame(t0, 0, ping(i), &cfg, &Anyone)), "frame {i}");
    }
    let refused = s.on_frame(t0, 0, ping(99), &cfg, &Anyone);
    assert!(is_refusal(&refused), "{refused:?}");
    // 100 ms later exactly one token is back; 1 s later ten.
    let t1 = t0 + Duration::from_millis(100);
    assert!(is_pong(&s.on_frame(t1, 0, ping(100), &cfg, &Anyone)));
    assert!(is_refusal(&s.on_frame(t1, 0, ping(101), &cfg, &Anyone)));
    let t2 = t1 + Duration::from_secs(1);
    for i in 0..10 {
        assert!(is_pong(&s.on_frame(t2, 0, ping(200 + i), &cfg, &Anyone)), "refilled {i}");
    }
    // Two refusals so far; the 21st since the bucket was full closes.
    for i in 0..18 {
        assert!(is_refusal(&s.on_frame(t2, 0, ping(300 + i), &cfg, &Anyone)), "{i}");
    }
    let last = s.on_frame(t2, 0, ping(400), &cfg, &Anyone);
    assert!(matches!(last, Action::Close { reason: CloseReason::RateLimited, .. }), "{last:?}");
    assert!(s.is_closed());
}

#[test]
fn zero_turns_the_limit_off() {
    let cfg = ServerSessionConfig { max_frames_per_sec: 0, ..Default::default() };
    let t0 = Instant::now();
    let mut s = logged_in(&cfg, t0);
    for i in 1..=10_000 {
        assert!(is_pong(&s.on_frame(t0, 0, ping(i), &cfg, &Anyone)));
    }
}
