//! Configuration: one TOML file, then `TERN_<SECTION>_<KEY>` environment variables, then
//! command-line flags (`--set section.key=value` reaches every key). Every key has a default
//! that works on loopback with no file at all; `etc/tern.toml` lists them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Process-level settings.
    pub server: ServerSection,
    /// Login tokens.
    pub auth: AuthSection,
    /// Client connections.
    pub gateway: GatewaySection,
    /// Sequencing, recall, sync.
    pub dispatch: DispatchSection,
    /// Which store and how to reach it.
    pub store: StoreSection,
    /// Distributed mode: presence Redis, links between gateways and dispatch workers.
    pub cluster: ClusterSection,
    /// The certificate QUIC (and TLS on TCP) present to clients.
    pub tls: TlsSection,
    /// The per-class login policy: how many devices of each class a user may have connected.
    pub devices: DevicesSection,
    /// Offline push: APNs, FCM, a webhook; when to notify. Off until a provider is set.
    pub notify: tern_notify::NotifyConfig,
}

/// `[devices]`: the most devices of each class a user may have connected at once; a login
/// beyond it kicks the user's longest-logged-in device of that class (DEVICE_REPLACED). 0:
/// unlimited. Classes: phone (ios, android), tablet, desktop, web, other (and no platform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesSection {
    /// Phones (ios, android).
    pub phone: u32,
    /// Tablets.
    pub tablet: u32,
    /// Desktop apps.
    pub desktop: u32,
    /// Browsers.
    pub web: u32,
    /// Other platforms and logins that name none.
    pub other: u32,
}

impl Default for DevicesSection {
    fn default() -> Self {
        let d = tern_dispatch::devices::DevicePolicy::default();
        Self { phone: d.phone, tablet: d.tablet, desktop: d.desktop, web: d.web, other: d.other }
    }
}

/// `[tls]` (loaded by [`Config::tls_identity`] in `tls.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first; "" = `<data_dir>/tls/cert.pem`, a self-signed one
    /// generated at the first start (for `names`).
    pub cert_file: String,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1); "" = `<data_dir>/tls/key.pem`.
    pub key_file: String,
    /// Names (DNS names and IP addresses, comma-separated) of the generated certificate.
    pub names: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            names: "localhost,127.0.0.1,::1".into(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Where the embedded store and the generated token key live.
    pub data_dir: PathBuf,
    /// Client TCP address.
    pub listen: SocketAddr,
    /// Client QUIC (UDP) address: "same" = `listen`'s IP and port, "" = no QUIC.
    pub quic_listen: String,
    /// TLS on the client TCP port (told from plain TCP by the first byte): "optional" = both
    /// (default), "required" = TLS only (plain clients get a fatal TLS_REQUIRED), "off".
    pub tls: String,
    /// HTTP address for /metrics, /healthz and /readyz; empty string disables it.
    pub http_listen: String,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    pub log: String,
    /// Accept queue length asked of the kernel for every listener (capped by
    /// net.core.somaxconn). Large enough for a reconnect storm after a gateway restart.
    pub listen_backlog: u32,
    /// Client I/O threads, each with its own event loop and listener; 0 = one per core.
    pub io_threads: usize,
    /// CPUs the process runs on, in the `taskset -c` syntax ("0-3,6"): every thread stays on
    /// them and I/O thread i is pinned to the i-th (wrapping around). "" (the default): the
    /// scheduler's choice.
    pub io_cpus: String,
    /// Share the client port with other processes (SO_REUSEPORT): every I/O thread gets its
    /// own listener, and other gateway processes of the same user that also set it may bind
    /// the same port (the kernel spreads connections over them). Off (the default): one
    /// listener shared by this process's I/O threads; a port in use is a startup error and no
    /// other process can bind it meanwhile.
    pub share_port: bool,
    /// After SIGTERM / Ctrl-C: how long `/readyz` answers 503 "draining" while connections
    /// are still served, before they are closed (time for a load balancer to stop sending new
    /// clients here). 0 closes at once.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
}

/// `[auth]` (the rules are in docs/PROTOCOL.md "Tokens"; keys are loaded by
/// [`Config::verifier`] in `keys.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// HS256 key as base64 text (standard or URL-safe alphabet, padding optional) of at least
    /// 32 bytes; the key is the decoded bytes. Empty: use `key_file`.
    pub hs256_key: String,
    /// Key file (the same base64 text); empty means `<data_dir>/jwt.key`, created with a
    /// random key at first start.
    pub key_file: String,
    /// `kid` of that HS256 key ("" = none). Tokens without `kid` are checked with the first
    /// key: this one, unless it is turned off (see `keys`).
    pub key_id: String,
    /// More verification keys (rotation, EdDSA): `{ id, alg = "HS256" | "EdDSA", key, key_file }`.
    /// When this is non-empty and `hs256_key` and `key_file` are both empty, there is no HS256
    /// key and the first of these is the default key.
    pub keys: Vec<AuthKey>,
    /// When set, a token's `iss` must equal it.
    pub issuer: String,
    /// When set, a token's `aud` must be it or contain it.
    pub audience: String,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`, seconds.
    pub leeway_secs: u32,
    /// `newest_wins` (a new login kicks the device's older connection) or `oldest_wins` (the
    /// new login is refused while the older one lives; one gateway only).
    pub duplicate_login: String,
}

/// One entry of `auth.keys`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthKey {
    /// The `kid` tokens name this key by.
    pub id: String,
    /// `HS256` (key: base64 secret, at least 32 bytes) or `EdDSA` (key: Ed25519 public key,
    /// base64 of its 32 bytes or a PEM `PUBLIC KEY`).
    pub alg: String,
    /// The key text; or empty and `key_file`.
    pub key: String,
    /// A file holding the key text.
    pub key_file: String,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            hs256_key: String::new(),
            key_file: String::new(),
            key_id: String::new(),
            keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: tern_gateway::auth::DEFAULT_LEEWAY_SECS,
            duplicate_login: "newest_wins".into(),
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// Time a new connection has to send Login.
    #[serde(with = "duration")]
    pub login_timeout: Duration,
    /// Heartbeat interval asked of clients.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Largest frame accepted (bytes).
    pub max_frame_bytes: usize,
    /// Per-connection cap on unsent bytes before a slow reader is kicked.
    pub max_outbound_bytes: usize,
    /// Per-connection cap on unsent frames.
    pub max_outbound_frames: usize,
    /// Per-connection requests in flight before reading pauses.
    pub max_inflight_requests: usize,
    /// Connections held at once.
    pub max_connections: usize,
    /// Connections accepted and not logged in yet, at once.
    pub max_pending_logins: usize,
    /// Average frames per second a connection may send (burst twice that); 0 = no limit.
    pub max_frames_per_sec: u32,
    /// How long a closing connection waits for its last frame (Kick, fatal Error) to be read.
    #[serde(with = "duration")]
    pub close_timeout: Duration,
    /// Connections from one source address (IPv6: /64) at once; 0 = no cap.
    pub max_connections_per_source: usize,
    /// Connections from one source address not logged in yet, at once; 0 = no cap.
    pub max_pending_logins_per_source: usize,
    /// QUIC handshakes in progress per I/O thread from which clients with an unvalidated
    /// address get a stateless Retry.
    pub quic_retry_handshakes: usize,
    /// QUIC handshakes in progress per I/O thread beyond which new clients are refused.
    pub quic_max_handshakes: usize,
    /// QUIC handshakes in progress per I/O thread from one source address (IPv6: /64) beyond
    /// which its new clients are refused; 0 = no cap.
    pub quic_max_handshakes_per_source: usize,
}

/// `[dispatch]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchSection {
    /// How long a sender may recall a message.
    #[serde(with = "duration")]
    pub recall_window: Duration,
    /// Most messages per durable write.
    pub max_commit_batch: usize,
    /// Longest a group commit waits for company, only under load (see tern_dispatch::batching).
    #[serde(with = "duration")]
    pub commit_delay: Duration,
    /// Sends waiting for commit before new ones are refused (UNAVAILABLE).
    pub pipeline_queue: usize,
    /// Most members a group may have.
    pub max_group_members: u32,
    /// Largest group whose receipts are pushed to every member (larger: watermarks only).
    pub receipt_push_max_members: u32,
    /// Member rows the membership cache holds over all groups.
    pub group_cache_rows: usize,
    /// Users whose presence the router caches (distributed mode; 0: look every recipient up).
    pub presence_cache_users: usize,
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `embedded` (a write-ahead log and a redb index in the data directory; `tern serve`), `redis` or `scylla` (shared by
    /// many dispatch workers).
    pub backend: String,
    /// fsync every commit of the embedded store. Only turn off for throwaway benchmarks: an
    /// ack would no longer mean durable.
    pub fsync: bool,
    /// Embedded store: size of each preallocated log segment, in bytes.
    pub wal_segment_bytes: u64,
    /// Embedded store: bytes of the in-memory filter of stored (sender, client_msg_id) keys
    /// that lets a new message skip the index lookup for a resend's original (0: off).
    pub dedupe_filter_bytes: usize,
    /// Embedded store: longest a committed message waits before the index applies it (reads
    /// never wait for this).
    #[serde(with = "duration")]
    pub index_interval: Duration,
    /// Embedded store: time between durable index checkpoints; bounds the log a restart
    /// replays.
    #[serde(with = "duration")]
    pub index_checkpoint: Duration,
    /// Redis store URL (backend `redis`): `redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS. The server must run with appendonly yes and appendfsync always
    /// (checked at start).
    pub redis_url: String,
    /// Redis store: `WAIT` for this many replicas after each append batch before acking, so
    /// a promoted replica has every acknowledged message. 0 (default): no wait.
    pub redis_min_replicas_acked: u32,
    /// Redis store: seqs each conversation skips when a replica has taken over; 0 (default)
    /// refuses to append after a takeover instead (see DEPLOYMENT.md, Redis store failover).
    pub redis_failover_seq_gap: u64,
    /// PEM CA file trusted for a `rediss://` `redis_url`; "" = the system's roots.
    pub redis_ca_file: String,
    /// ScyllaDB contact points, comma-separated host:port (backend `scylla`).
    pub scylla_nodes: String,
    /// ScyllaDB keyspace.
    pub scylla_keyspace: String,
    /// Keyspace replication map in CQL, "" for the backend's default (dev: SimpleStrategy RF 1).
    pub scylla_replication: String,
    /// Local datacenter for token- and DC-aware routing, "" for none.
    pub scylla_local_dc: String,
    /// Consistency of reads and writes, e.g. LOCAL_QUORUM.
    pub scylla_consistency: String,
    /// Serial consistency of the LWTs (seq allocation, dedupe): SERIAL (default, safe with
    /// workers in several DCs) or LOCAL_SERIAL (only with one writer DC per conversation).
    pub scylla_serial_consistency: String,
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// This process's id (gateway or dispatch worker); "" picks a random one at start.
    pub node_id: String,
    /// Presence Redis (who is connected where, worker discovery). Soft state: it may be
    /// flushed or restarted; gateways republish. `redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS.
    pub presence_redis: String,
    /// PEM CA file trusted for a `rediss://` `presence_redis`; "" = the system's roots.
    pub presence_redis_ca_file: String,
    /// Prefix of every Redis key Tern writes (several clusters may share one Redis).
    pub key_prefix: String,
    /// Gateway: dispatch worker link addresses, comma-separated; "" discovers them in
    /// presence Redis.
    pub dispatch_workers: String,
    /// Dispatch worker: where gateways link (`tern dispatch`).
    pub link_listen: String,
    /// Dispatch worker: the address gateways should dial, announced in presence Redis; "" uses
    /// the bound `link_listen` address.
    pub link_advertise: String,
    /// Gateway: how long a request waits for a worker's answer before UNAVAILABLE.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Presence entry lifetime without refresh (gateways refresh every third of it).
    #[serde(with = "duration")]
    pub presence_ttl: Duration,
    /// The cluster secret that gateways and dispatch workers prove to each other on every link:
    /// base64, at least 32 bytes. Several, comma-separated, during a rotation: the first
    /// proves this node, every one is accepted. Required by `tern gateway` / `tern dispatch`
    /// (or `secret_file`, or `insecure_links`). Never printed.
    pub secret: String,
    /// A file holding the cluster secret(s) instead (same format; commas or newlines).
    pub secret_file: String,
    /// Loopback development only: links without a secret (a public, well-known one). Workers
    /// must then listen on loopback and gateways link only loopback workers.
    pub insecure_links: bool,
    /// How long a new link has to complete the authentication handshake.
    #[serde(with = "duration")]
    pub link_handshake_timeout: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            quic_listen: "same".into(),
            tls: "optional".into(),
            http_listen: "127.0.0.1:7401".into(),
            log: "info".into(),
            listen_backlog: 4096,
            io_threads: 0,
            io_cpus: String::new(),
            share_port: false,
            drain_delay: Duration::ZERO,
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        let g = tern_gateway::GatewayConfig::default();
        let q = tern_gateway::quic::QuicSettings::default();
        Self {
            login_timeout: g.session.login_timeout,
            heartbeat_interval: g.session.heartbeat_interval,
            idle_timeout: g.session.idle_timeout,
            max_frame_bytes: g.session.max_frame_bytes,
            max_outbound_bytes: g.max_outbound_bytes,
            max_outbound_frames: g.max_outbound_frames,
            max_inflight_requests: g.max_inflight_requests,
            max_connections: g.max_connections,
            max_pending_logins: g.max_pending_logins,
            max_frames_per_sec: g.session.max_frames_per_sec,
            close_timeout: g.close_timeout,
            max_connections_per_source: g.max_connections_per_source,
            max_pending_logins_per_source: g.max_pending_logins_per_source,
            quic_retry_handshakes: q.retry_handshakes,
            quic_max_handshakes: q.max_handshakes,
            quic_max_handshakes_per_source: q.max_handshakes_per_source,
        }
    }
}

impl Default for DispatchSection {
    fn default() -> Self {
        let d = tern_dispatch::DispatchConfig::default();
        Self {
            recall_window: d.recall_window,
            max_commit_batch: d.max_commit_batch,
            commit_delay: d.commit_delay,
            pipeline_queue: d.pipeline_queue,
            max_group_members: d.max_group_members,
            receipt_push_max_members: d.receipt_push_max_members,
            group_cache_rows: d.group_cache_rows,
            presence_cache_users: 1_000_000,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            fsync: true,
            wal_segment_bytes: 64 << 20,
            dedupe_filter_bytes: 16 << 20,
            index_interval: Duration::from_millis(50),
            index_checkpoint: Duration::from_secs(5),
            redis_url: "redis://127.0.0.1:6380/".into(),
            redis_min_replicas_acked: 0,
            redis_failover_seq_gap: 0,
            redis_ca_file: String::new(),
            scylla_nodes: String::new(),
            scylla_keyspace: "tern".into(),
            scylla_replication: String::new(),
            scylla_local_dc: String::new(),
            scylla_consistency: "LOCAL_QUORUM".into(),
            scylla_serial_consistency: "SERIAL".into(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            presence_redis: "redis://127.0.0.1:6379/".into(),
            presence_redis_ca_file: String::new(),
            key_prefix: "tern:".into(),
            dispatch_workers: String::new(),
            link_listen: "127.0.0.1:7500".into(),
            link_advertise: String::new(),
            request_timeout: Duration::from_secs(10),
            presence_ttl: Duration::from_secs(90),
            secret: String::new(),
            secret_file: String::new(),
            insecure_links: false,
            link_handshake_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Layers the configuration: defaults, then the TOML file (when given), then environment
    /// variables `TERN_<SECTION>_<KEY>`, then `overrides` (`section.key=value`, from flags).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> anyhow::Result<Self> {
        let mut table = toml::Table::try_from(Config::default()).context("default config")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let file: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge(&mut table, file);
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("TERN_") else { continue };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = find_key(&table, &rest) else { continue };
            set(&mut table, &section, &key, &value)
                .with_context(|| format!("environment variable {name}"))?;
        }
        for o in overrides {
            let (path, value) = o
                .split_once('=')
                .with_context(|| format!("--set {o}: expected section.key=value"))?;
            let (section, key) = path
                .rsplit_once('.')
                .with_context(|| format!("--set {o}: expected section.key=value"))?;
            set(&mut table, section, key, value).with_context(|| format!("--set {o}"))?;
        }
        let cfg: Config = table.try_into().context("invalid configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let g = &self.gateway;
        let min_frame = tern_proto::MIN_MAX_FRAME_BYTES;
        if g.max_frame_bytes < min_frame || g.max_frame_bytes > 16 * 1024 * 1024 {
            bail!(
                "gateway.max_frame_bytes = {} is out of range: it must be between {min_frame} \
                 (8 KiB, so that the message body limit max_frame_bytes - 2048 and the sync page \
                 budget max_frame_bytes - 4096 stay positive) and 16777216 (16 MiB)",
                g.max_frame_bytes
            );
        }
        if g.idle_timeout <= g.heartbeat_interval {
            bail!("gateway.idle_timeout must be longer than gateway.heartbeat_interval");
        }
        if g.max_outbound_bytes < g.max_frame_bytes {
            bail!("gateway.max_outbound_bytes must be at least gateway.max_frame_bytes");
        }
        if !["embedded", "redis", "scylla"].contains(&self.store.backend.as_str()) {
            bail!("store.backend must be embedded, redis or scylla");
        }
        if self.dispatch.max_commit_batch == 0 || self.dispatch.pipeline_queue == 0 {
            bail!("dispatch.max_commit_batch and dispatch.pipeline_queue must be positive");
        }
        self.duplicate_login()?;
        if self.auth.leeway_secs > 3600 {
            bail!("auth.leeway_secs must be at most 3600 (it is a clock-skew allowance)");
        }
        Ok(())
    }

    /// The gateway's settings.
    pub fn gateway_config(&self) -> tern_gateway::GatewayConfig {
        let g = &self.gateway;
        tern_gateway::GatewayConfig {
            session: tern_proto::session::server::ServerSessionConfig {
                login_timeout: g.login_timeout,
                heartbeat_interval: g.heartbeat_interval,
                idle_timeout: g.idle_timeout,
                max_frame_bytes: g.max_frame_bytes,
                max_frames_per_sec: g.max_frames_per_sec,
            },
            max_outbound_bytes: g.max_outbound_bytes,
            max_outbound_frames: g.max_outbound_frames,
            max_inflight_requests: g.max_inflight_requests,
            max_connections: g.max_connections,
            max_pending_logins: g.max_pending_logins,
            close_timeout: g.close_timeout,
            max_connections_per_source: g.max_connections_per_source,
            max_pending_logins_per_source: g.max_pending_logins_per_source,
            // Checked by `validate`.
            duplicate_login: self.duplicate_login().unwrap_or_default(),
        }
    }

    /// The embedded store's settings (`[store]`).
    pub fn embedded_store_config(&self) -> tern_store::EmbeddedConfig {
        let s = &self.store;
        tern_store::EmbeddedConfig {
            durability: if s.fsync {
                tern_store::embedded::Durability::Fsync
            } else {
                tern_store::embedded::Durability::NoSync
            },
            wal_segment_bytes: s.wal_segment_bytes,
            dedupe_filter_bytes: s.dedupe_filter_bytes,
            index: tern_store::embedded::IndexConfig {
                interval: s.index_interval,
                checkpoint: s.index_checkpoint,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Dispatch's settings.
    pub fn dispatch_config(&self) -> tern_dispatch::DispatchConfig {
        tern_dispatch::DispatchConfig {
            recall_window: self.dispatch.recall_window,
            max_commit_batch: self.dispatch.max_commit_batch,
            commit_delay: self.dispatch.commit_delay,
            pipeline_queue: self.dispatch.pipeline_queue,
            max_group_members: self.dispatch.max_group_members,
            receipt_push_max_members: self.dispatch.receipt_push_max_members,
            group_cache_rows: self.dispatch.group_cache_rows,
            devices: tern_dispatch::devices::DevicePolicy {
                phone: self.devices.phone,
                tablet: self.devices.tablet,
                desktop: self.devices.desktop,
                web: self.devices.web,
                other: self.devices.other,
            },
            ..Default::default()
        }
        .fit_frames(self.gateway.max_frame_bytes)
    }

    /// The secrets gateway <-> worker links are authenticated with (`cluster.secret`, or
    /// `cluster.secret_file`, or the public development secret of `cluster.insecure_links`).
    /// An error that says what to set when there is none.
    pub fn link_secrets(&self) -> anyhow::Result<tern_proto::session::link::LinkSecrets> {
        use tern_proto::session::link::LinkSecrets;
        let c = &self.cluster;
        let text = match (c.secret.trim().is_empty(), c.secret_file.is_empty()) {
            (false, false) => bail!("set only one of cluster.secret and cluster.secret_file"),
            (false, true) => c.secret.clone(),
            (true, false) => std::fs::read_to_string(&c.secret_file)
                .with_context(|| format!("reading cluster.secret_file {}", c.secret_file))?,
            (true, true) => String::new(),
        };
        let keys = text
            .split(|ch: char| ch == ',' || ch.is_whitespace())
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| decode_secret(k).with_context(|| format!("cluster secret #{}", i + 1)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if keys.is_empty() {
            if c.insecure_links {
                if let Ok(addr) = c.link_listen.parse::<SocketAddr>()
                    && !addr.ip().is_loopback()
                {
                    bail!(
                        "cluster.insecure_links is for loopback development only: \
                         cluster.link_listen {addr} is not a loopback address"
                    );
                }
                return Ok(LinkSecrets::insecure_development());
            }
            bail!(
                "no cluster secret: tern gateway and tern dispatch authenticate every link with \
                 one. Set cluster.secret (the same on every gateway and worker, e.g. \
                 --set cluster.secret=$(head -c 32 /dev/urandom | base64)) or \
                 cluster.secret_file; for loopback development only, cluster.insecure_links = true"
            );
        }
        if c.insecure_links {
            bail!("cluster.insecure_links = true and a cluster secret: remove one of them");
        }
        Ok(LinkSecrets::new(keys)?)
    }
}

/// One base64 secret (standard or URL-safe alphabet, padding optional).
fn decode_secret(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let t = text.trim_end_matches('=').replace('+', "-").replace('/', "_");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).context("not base64")
}

fn merge(dst: &mut toml::Table, src: toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

/// Finds `section_key` (e.g. `gateway_max_frame_bytes`) among the known keys.
fn find_key(table: &toml::Table, name: &str) -> Option<(String, String)> {
    table.iter().find_map(|(section, v)| {
        let key = name.strip_prefix(section.as_str())?.strip_prefix('_')?;
        v.as_table()?.contains_key(key).then(|| (section.clone(), key.to_owned()))
    })
}

/// Sets one key from its text form, typed like the key's current value.
/// Sets `key` of `section`. In a nested section (`notify.webhook`, absent by default: "not
/// configured") a missing section or key is created, typed by its text (integer, boolean, else
/// string); deserialization then refuses unknown keys as for a file. A top-level section's
/// keys all exist: another one is an unknown key.
fn set(table: &mut toml::Table, section: &str, key: &str, text: &str) -> anyhow::Result<()> {
    let mut parts = section.split('.');
    let top = parts.next().unwrap_or_default();
    let mut sec = table
        .get_mut(top)
        .and_then(|s| s.as_table_mut())
        .with_context(|| format!("unknown section [{section}]"))?;
    let mut nested = false;
    for part in parts {
        nested = true;
        sec = sec
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("{section}: {part} is not a section"))?;
    }
    let untyped;
    let old = match sec.get(key) {
        Some(old) => old,
        None if nested => {
            untyped = match text.trim() {
                t if t.parse::<i64>().is_ok() => toml::Value::Integer(0),
                "true" | "false" => toml::Value::Boolean(false),
                _ => toml::Value::String(String::new()),
            };
            &untyped
        }
        None => anyhow::bail!("unknown key {section}.{key}"),
    };
    let new = match old {
        toml::Value::Integer(_) => {
            toml::Value::Integer(text.trim().parse().context("expected an integer")?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(text.trim().parse().context("expected true or false")?)
        }
        _ => toml::Value::String(text.to_owned()),
    };
    sec.insert(key.to_owned(), new);
    Ok(())
}

/// Parses a duration like `250us`, `500ms`, `10s`, `2m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let us = match unit {
        "us" | "µs" => 1,
        "ms" => 1000,
        "s" | "" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(format!("invalid duration unit in {text:?} (use us, ms, s, m, h or d)")),
    };
    n.checked_mul(us)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("duration {text:?} too large"))
}

/// Formats a duration in the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    let units = [
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1000),
    ];
    for (unit, size) in units {
        if us > 0 && us.is_multiple_of(size) {
            return format!("{}{unit}", us / size);
        }
    }
    if us == 0 { "0ms".into() } else { format!("{us}us") }
}

mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        for (t, ms) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("36h", 129_600_000),
            ("7d", 604_800_000),
        ] {
            assert_eq!(parse_duration(t).unwrap(), Duration::from_millis(ms));
            assert_eq!(format_duration(Duration::from_millis(ms)), t);
        }
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:9000\"\n[gateway]\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        let env = vec![
            ("TERN_GATEWAY_MAX_FRAME_BYTES".to_string(), "16384".to_string()),
            ("TERN_SERVER_LISTEN".to_string(), "127.0.0.1:9001".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let cfg = Config::load(Some(&path), env, &["server.listen=127.0.0.1:9002".into()]).unwrap();
        assert_eq!(cfg.server.listen.port(), 9002);
        assert_eq!(cfg.gateway.idle_timeout, Duration::from_secs(300));
        assert_eq!(cfg.gateway.max_frame_bytes, 16384);
        let cfg = Config::load(Some(&path), Vec::new(), &[]).unwrap();
        assert_eq!(cfg.server.listen.port(), 9000);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(Config::load(None, Vec::new(), &["gateway.nope=1".into()]).is_err());
        assert!(Config::load(None, Vec::new(), &["gateway.max_frame_bytes=big".into()]).is_err());
        assert!(Config::load(None, Vec::new(), &["gateway.idle_timeout=1s".into()]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[gateway]\ntypo_key = 3\n").unwrap();
        assert!(Config::load(Some(&path), Vec::new(), &[]).is_err());
    }

    #[test]
    fn minting_never_creates_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let sets = [format!("server.data_dir={}", dir.path().join("data").display())];
        let cfg = Config::load(None, Vec::new(), &sets).unwrap();
        let err = cfg.existing_token_key().unwrap_err().to_string();
        assert!(err.contains("no token signing key at") && err.contains("--data-dir"), "{err}");
        assert!(!dir.path().join("data").exists(), "nothing created");
        // Once the server created it, it is used.
        let served = cfg.token_key().unwrap();
        assert_eq!(cfg.existing_token_key().unwrap().to_base64(), served.to_base64());
        let key = served.to_base64();
        let cfg = Config::load(None, Vec::new(), &[format!("auth.hs256_key={key}")]).unwrap();
        assert!(cfg.existing_token_key().is_ok(), "a configured key needs no file");
    }

    #[test]
    fn max_frame_bytes_minimum_keeps_the_derived_limits_positive() {
        let load =
            |v: usize| Config::load(None, Vec::new(), &[format!("gateway.max_frame_bytes={v}")]);
        for bad in [1024, 4096, 8191, 16 * 1024 * 1024 + 1] {
            let err = format!("{:#}", load(bad).unwrap_err());
            assert!(err.contains("gateway.max_frame_bytes") && err.contains("8192"), "{err}");
        }
        let cfg = load(8192).unwrap();
        let d = cfg.dispatch_config();
        assert_eq!((d.max_body_bytes, d.max_page_bytes), (8192 - 2048, 8192 - 4096));
    }

    #[test]
    fn link_secrets_are_required_unless_insecure_links_is_asked_for() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load(None, Vec::new(), &sets).unwrap().link_secrets()
        };
        let err = load(&[]).unwrap_err().to_string();
        assert!(err.contains("cluster.secret") && err.contains("insecure_links"), "{err}");
        let a = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="; // 32 x 'A'
        let b = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI"; // 32 x 'B', no padding
        assert_eq!(load(&[&format!("cluster.secret={a}")]).unwrap().len(), 1);
        // Standard base64 as `head -c 32 /dev/urandom | base64` prints it (+, /, padding).
        let std_b64 = "+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/8=";
        assert_eq!(load(&[&format!("cluster.secret={std_b64}")]).unwrap().len(), 1);
        let two = load(&[&format!("cluster.secret={a}, {b}")]).unwrap();
        assert_eq!(two.len(), 2);
        assert!(!two.is_insecure());
        let short = load(&["cluster.secret=c2hvcnQ="]).unwrap_err();
        assert!(format!("{short:#}").contains("at least 32"), "{short:#}");
        assert!(load(&["cluster.secret=not base64!"]).is_err());
        assert!(load(&["cluster.insecure_links=true"]).unwrap().is_insecure());
        assert!(load(&["cluster.insecure_links=true", &format!("cluster.secret={a}")]).is_err());
        // From a file, one per line; not both.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{a}\n{b}\n")).unwrap();
        let file = format!("cluster.secret_file={}", path.display());
        assert_eq!(load(&[&file]).unwrap().len(), 2);
        assert!(load(&[&file, &format!("cluster.secret={a}")]).is_err());
        // The secret never reaches Debug output of the secrets.
        assert!(!format!("{:?}", load(&[&file]).unwrap()).contains("QUFB"));
    }

    #[test]
    fn provider_sections_can_be_set_from_flags_and_typos_are_refused() {
        let sets: Vec<String> = [
            "notify.webhook.url=http://127.0.0.1:9/push",
            "notify.webhook.limits.max_attempts=1",
            "notify.ack_timeout=2s",
            "notify.ca_file=/etc/tern/ca.pem",
        ]
        .map(String::from)
        .into();
        let cfg = Config::load(None, Vec::new(), &sets).unwrap();
        let w = cfg.notify.webhook.as_ref().unwrap();
        assert_eq!((w.url.as_str(), w.limits.max_attempts), ("http://127.0.0.1:9/push", 1));
        assert_eq!(cfg.notify.ack_timeout, Duration::from_secs(2));
        assert_eq!(cfg.notify.ca_file, Path::new("/etc/tern/ca.pem"));
        assert!(cfg.notify.any_provider() && !Config::default().notify.any_provider());
        for typo in ["notify.webhook.ulr=x", "dispatch.no_such_key=1", "nosuch.key=1"] {
            assert!(Config::load(None, Vec::new(), &[typo.to_string()]).is_err(), "{typo}");
        }
    }

    #[test]
    fn shipped_example_file_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/tern.toml");
        let cfg = Config::load(Some(&path), Vec::new(), &[]).unwrap();
        assert_eq!(cfg, Config::default(), "etc/tern.toml must list the defaults");
    }
}
