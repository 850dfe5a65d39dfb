//! Gateway counters, rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Gateway counters and gauges. All updates are relaxed atomics.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections refused because `max_connections` was reached.
    pub connections_rejected: AtomicU64,
    /// Successful logins.
    pub logins_ok: AtomicU64,
    /// Refused logins (bad or expired token, unsupported version).
    pub logins_failed: AtomicU64,
    /// Logins refused by the device check-in: the device was logged out after its token.
    pub logged_out_refusals: AtomicU64,
    /// Connections closed for sending no Login in time.
    pub login_timeouts: AtomicU64,
    /// Connections closed for silence.
    pub idle_timeouts: AtomicU64,
    /// Older connections kicked by a newer login of the same device.
    pub duplicate_login_kicks: AtomicU64,
    /// Connections closed because their outbound queue hit its cap.
    pub slow_consumer_kicks: AtomicU64,
    /// Connections closed for a malformed or oversized frame or a frame before login.
    pub bad_frames: AtomicU64,
    /// Connections accepted but not logged in yet (gauge).
    pub logins_pending: AtomicU64,
    /// Connections refused at accept because `max_pending_logins` were waiting.
    pub pending_login_rejections: AtomicU64,
    /// Connections closed for exceeding their frame rate.
    pub rate_limit_closes: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames queued for sending.
    pub frames_out: AtomicU64,
    /// Bytes waiting in outbound queues, all connections together (gauge).
    pub outbound_queued_bytes: AtomicU64,
    /// Connections refused at accept because their source held its connection cap.
    pub source_connection_rejections: AtomicU64,
    /// Connections refused at accept because their source held its pending-login cap.
    pub source_pending_login_rejections: AtomicU64,
    /// Distinct sources holding connections now (gauge; kept by the gateway's source map).
    pub sources: AtomicU64,
    /// Connections kicked (TOKEN_EXPIRED) when their token's exp plus leeway passed.
    pub token_expiry_kicks: AtomicU64,
    /// RefreshToken requests answered TokenRefreshed.
    pub token_refreshes: AtomicU64,
    /// RefreshToken requests refused (bad, expired, or another user's or device's token).
    pub token_refresh_failures: AtomicU64,
    /// Logins refused because the device was connected already (`oldest_wins`).
    pub duplicate_login_refusals: AtomicU64,
    /// QUIC connections open now, a part of `connections_open` (gauge).
    pub quic_connections_open: AtomicU64,
    /// Datagrams that reached one I/O thread's UDP socket for a QUIC connection held by
    /// another (a migrated client) and were handed to that thread.
    pub quic_datagrams_forwarded: AtomicU64,
    /// QUIC connections whose 0-RTT data the gateway accepted (resumed sessions).
    pub quic_0rtt_connections: AtomicU64,
    /// QUIC clients refused at their first packet (CONNECTION_REFUSED): at the connection cap,
    /// at `max_handshakes` handshakes in progress, or at their source's handshake cap.
    pub quic_handshakes_refused: AtomicU64,
    /// Stateless Retries sent to QUIC clients whose address was not validated, at
    /// `retry_handshakes` handshakes in progress.
    pub quic_retries: AtomicU64,
    /// TLS-on-TCP connections open now, a part of `connections_open` (gauge).
    pub tls_connections_open: AtomicU64,
    /// TLS-on-TCP connections whose handshake failed (a bad ClientHello, no common protocol or
    /// ALPN, a client that refused the certificate).
    pub tls_handshake_failures: AtomicU64,
    /// Plain-TCP connections refused because the port requires TLS.
    pub tls_plaintext_refusals: AtomicU64,
}

impl GatewayMetrics {
    /// Appends every metric to `out` in Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 20] = [
            (
                "tern_gateway_logged_out_refusals_total",
                "counter",
                "Logins refused: the device was logged out after its token was issued.",
                &self.logged_out_refusals,
            ),
            (
                "tern_gateway_source_connection_rejections_total",
                "counter",
                "Connections refused at accept at the per-source connection cap.",
                &self.source_connection_rejections,
            ),
            (
                "tern_gateway_source_pending_login_rejections_total",
                "counter",
                "Connections refused at accept at the per-source pending-login cap.",
                &self.source_pending_login_rejections,
            ),
            (
                "tern_gateway_sources",
                "gauge",
                "Distinct source addresses (IPv6: /64) holding connections now.",
                &self.sources,
            ),
            (
                "tern_gateway_outbound_queued_bytes",
                "gauge",
                "Bytes waiting in connections' outbound queues (the sockets did not take them yet).",
                &self.outbound_queued_bytes,
            ),
            (
                "tern_gateway_logins_pending",
                "gauge",
                "Connections accepted and not logged in yet.",
                &self.logins_pending,
            ),
            (
                "tern_gateway_pending_login_rejections_total",
                "counter",
                "Connections refused at the pending-login limit.",
                &self.pending_login_rejections,
            ),
            (
                "tern_gateway_rate_limit_closes_total",
                "counter",
                "Connections closed for exceeding their frame rate.",
                &self.rate_limit_closes,
            ),
            (
                "tern_gateway_connections_open",
                "gauge",
                "Client connections open now.",
                &self.connections_open,
            ),
            (
                "tern_gateway_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                &self.connections_accepted,
            ),
            (
                "tern_gateway_connections_rejected_total",
                "counter",
                "Connections refused at the connection limit.",
                &self.connections_rejected,
            ),
            ("tern_gateway_logins_total", "counter", "Successful logins.", &self.logins_ok),
            (
                "tern_gateway_login_failures_total",
                "counter",
                "Refused logins.",
                &self.logins_failed,
            ),
            (
                "tern_gateway_login_timeouts_total",
                "counter",
                "Connections closed for no Login in time.",
                &self.login_timeouts,
            ),
            (
                "tern_gateway_idle_timeouts_total",
                "counter",
                "Connections closed for silence.",
                &self.idle_timeouts,
            ),
            (
                "tern_gateway_duplicate_login_kicks_total",
                "counter",
                "Connections kicked by a newer login of the same device.",
                &self.duplicate_login_kicks,
            ),
            (
                "tern_gateway_slow_consumer_kicks_total",
                "counter",
                "Connections closed at the outbound queue cap.",
                &self.slow_consumer_kicks,
            ),
            (
                "tern_gateway_bad_frames_total",
                "counter",
                "Connections closed for a bad frame or a frame before login.",
                &self.bad_frames,
            ),
            (
                "tern_gateway_frames_in_total",
                "counter",
                "Frames received from clients.",
                &self.frames_in,
            ),
            (
                "tern_gateway_frames_out_total",
                "counter",
                "Frames queued to clients.",
                &self.frames_out,
            ),
        ];
        let token_rows: [(&str, &str, &str, &AtomicU64); 4] = [
            (
                "tern_gateway_token_expiry_kicks_total",
                "counter",
                "Connections kicked when their token expired (exp plus leeway).",
                &self.token_expiry_kicks,
            ),
            (
                "tern_gateway_token_refreshes_total",
                "counter",
                "RefreshToken requests that swapped in a new token.",
                &self.token_refreshes,
            ),
            (
                "tern_gateway_token_refresh_failures_total",
                "counter",
                "RefreshToken requests refused (the old token stays in force).",
                &self.token_refresh_failures,
            ),
            (
                "tern_gateway_duplicate_login_refusals_total",
                "counter",
                "Logins refused because the device was connected already (oldest_wins).",
                &self.duplicate_login_refusals,
            ),
        ];
        let quic_rows: [(&str, &str, &str, &AtomicU64); 5] = [
            (
                "tern_gateway_quic_connections_open",
                "gauge",
                "Client connections over QUIC open now (counted in connections_open too).",
                &self.quic_connections_open,
            ),
            (
                "tern_gateway_quic_datagrams_forwarded_total",
                "counter",
                "QUIC datagrams handed from the I/O thread that received them to the one holding their connection.",
                &self.quic_datagrams_forwarded,
            ),
            (
                "tern_gateway_quic_0rtt_connections_total",
                "counter",
                "QUIC connections whose 0-RTT data was accepted (resumed sessions).",
                &self.quic_0rtt_connections,
            ),
            (
                "tern_gateway_quic_handshakes_refused_total",
                "counter",
                "QUIC clients refused at their first packet (connection cap, handshakes in progress, or their source's handshake cap).",
                &self.quic_handshakes_refused,
            ),
            (
                "tern_gateway_quic_retries_total",
                "counter",
                "Stateless Retries sent to QUIC clients with an unvalidated address under handshake load.",
                &self.quic_retries,
            ),
        ];
        let tls_rows: [(&str, &str, &str, &AtomicU64); 3] = [
            (
                "tern_gateway_tls_connections_open",
                "gauge",
                "Client connections over TLS on TCP open now (counted in connections_open too).",
                &self.tls_connections_open,
            ),
            (
                "tern_gateway_tls_handshake_failures_total",
                "counter",
                "TLS-on-TCP handshakes that failed.",
                &self.tls_handshake_failures,
            ),
            (
                "tern_gateway_tls_plaintext_refusals_total",
                "counter",
                "Plain-TCP connections refused because the port requires TLS.",
                &self.tls_plaintext_refusals,
            ),
        ];
        let all = rows.into_iter().chain(token_rows).chain(quic_rows).chain(tls_rows);
        for (name, kind, help, v) in all {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}
