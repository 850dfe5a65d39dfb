//! Who may connect, for every transport: the gateway-wide caps on open connections and pending
//! logins and the per-source caps, checked before a [`super::Connection`] exists, and the
//! counts that follow a connection in and out. No I/O: counters and caps only.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::sources::{Refusal, SourceKey, SourceLimits};

/// Checks the caps for a new peer at `ip` (a refusal is counted, the peer is to be closed).
/// `Some(source)` holds a place in the source's counts: call [`admitted`] once the transport
/// took the connection, or [`withdraw`] if it could not.
pub fn admit(
    cfg: &GatewayConfig,
    m: &GatewayMetrics,
    sources: &SourceLimits,
    ip: IpAddr,
) -> Option<SourceKey> {
    if m.connections_open.load(Relaxed) as usize >= cfg.max_connections {
        m.connections_rejected.fetch_add(1, Relaxed);
        return None;
    }
    if m.logins_pending.load(Relaxed) as usize >= cfg.max_pending_logins {
        m.pending_login_rejections.fetch_add(1, Relaxed);
        return None;
    }
    let source = sources.key(ip);
    if let Err(refusal) = sources.admit(source) {
        match refusal {
            Refusal::Connections => m.source_connection_rejections.fetch_add(1, Relaxed),
            Refusal::PendingLogins => m.source_pending_login_rejections.fetch_add(1, Relaxed),
        };
        tracing::debug!(%ip, ?refusal, "connection refused at a per-source cap");
        return None;
    }
    m.sources.store(sources.tracked(), Relaxed);
    Some(source)
}

/// The transport took an admitted connection: it is open and a pending login (its
/// [`super::Connection`] counts itself out of `logins_pending` when it logs in or closes).
pub fn admitted(m: &GatewayMetrics) {
    m.logins_pending.fetch_add(1, Relaxed);
    m.connections_open.fetch_add(1, Relaxed);
    m.connections_accepted.fetch_add(1, Relaxed);
}

/// The transport could not take an admitted connection: gives its place back.
pub fn withdraw(sources: &SourceLimits, source: SourceKey) {
    sources.not_pending(source);
    sources.release(source);
}

/// A connection is gone (after [`super::Connection::release`]).
pub fn closed(m: &GatewayMetrics, sources: &SourceLimits, source: SourceKey) {
    sources.release(source);
    m.sources.store(sources.tracked(), Relaxed);
    m.connections_open.fetch_sub(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_and_count_and_places_come_back() {
        let cfg = GatewayConfig { max_pending_logins: 2, ..GatewayConfig::default() };
        let m = GatewayMetrics::default();
        let sources = SourceLimits::new(0, 1);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let first = admit(&cfg, &m, &sources, ip);
        assert!(first.is_some());
        admitted(&m);
        assert_eq!(admit(&cfg, &m, &sources, ip), None, "one pending login per source");
        assert_eq!(m.source_pending_login_rejections.load(Relaxed), 1);
        let other = IpAddr::from([198, 51, 100, 7]);
        let second = admit(&cfg, &m, &sources, other);
        assert!(second.is_some());
        admitted(&m);
        let third = IpAddr::from([203, 0, 113, 9]);
        assert_eq!(admit(&cfg, &m, &sources, third), None, "two pending logins in all");
        assert_eq!(m.pending_login_rejections.load(Relaxed), 1);
        // The second peer logs in and leaves; the first is withdrawn by its transport.
        if let Some(s) = second {
            sources.not_pending(s);
            m.logins_pending.fetch_sub(1, Relaxed);
            closed(&m, &sources, s);
        }
        if let Some(s) = first {
            withdraw(&sources, s);
            m.logins_pending.fetch_sub(1, Relaxed);
            m.connections_open.fetch_sub(1, Relaxed);
        }
        assert_eq!(m.connections_open.load(Relaxed), 0);
        assert!(admit(&cfg, &m, &sources, ip).is_some(), "its place came back");
    }
}
