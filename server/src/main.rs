//! `tern`: the one binary operators and developers run. `tern serve` starts the embedded
//! single-node server; `tern gateway` and `tern dispatch` are the distributed mode's processes;
//! `tern token` mints a development login token; `tern chat` is a terminal chat client;
//! `tern bench` measures a running server end to end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tern::config::{Config, parse_duration};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "tern", version, about = "Tern instant-messaging server")]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults apply (see etc/tern.toml).
    #[arg(long, short = 'c', global = true, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Override any configuration key: `--set gateway.idle_timeout=2m` (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Data directory (same as `--set server.data_dir=...`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded single-node server (gateway + dispatch + embedded store).
    Serve(ServeArgs),
    /// Distributed mode: hold client connections, link to every dispatch worker.
    Gateway(GatewayArgs),
    /// Distributed mode: a stateless dispatch worker over a shared store (redis or scylla).
    Dispatch(DispatchArgs),
    /// Print a login token signed with the server's key, for development.
    Token(TokenArgs),
    /// Chat from a terminal through a running server.
    Chat(tern::chat::ChatArgs),
    /// Measure a running server end to end with many SDK clients.
    Bench(tern::bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Client TCP address (same as `--set server.listen=...`); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// HTTP address for /metrics, /healthz and /readyz (same as `--set server.http_listen=...`).
    #[arg(long)]
    http_listen: Option<String>,
}

#[derive(Args)]
struct GatewayArgs {
    /// Client TCP address (same as `--set server.listen=...`).
    #[arg(long)]
    listen: Option<String>,
    /// HTTP address for /metrics, /healthz and /readyz (same as `--set server.http_listen=...`).
    #[arg(long)]
    http_listen: Option<String>,
    /// Node id (same as `--set cluster.node_id=...`).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args)]
struct DispatchArgs {
    /// Where gateways link (same as `--set cluster.link_listen=...`).
    #[arg(long)]
    link_listen: Option<String>,
    /// HTTP address for /metrics, /healthz and /readyz (same as `--set server.http_listen=...`).
    #[arg(long)]
    http_listen: Option<String>,
    /// Node id (same as `--set cluster.node_id=...`).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// User id.
    #[arg(long)]
    user: String,
    /// Device id.
    #[arg(long, default_value = "default")]
    device: String,
    /// Validity, e.g. 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: Duration,
    /// Mint an EdDSA token with this Ed25519 private key file (PEM `PRIVATE KEY` as `openssl
    /// genpkey -algorithm ed25519` writes, or the base64 of the 32-byte seed) instead of the
    /// server's HS256 key.
    #[arg(long, value_name = "FILE")]
    ed25519_key: Option<std::path::PathBuf>,
    /// The `kid` header of the token (default: `auth.key_id` for the HS256 key, none for
    /// `--ed25519-key`).
    #[arg(long)]
    kid: Option<String>,
}

/// Runs the command; a failure prints `error: ` and its cause chain on one line (never a
/// backtrace, whatever RUST_BACKTRACE says: these are the user's errors, not crashes) and exits
/// with status 1.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides = cli.set.clone();
    if let Some(d) = &cli.data_dir {
        overrides.push(format!("server.data_dir={}", d.display()));
    }
    let mut flag = |key: &str, v: &Option<String>| {
        if let Some(v) = v {
            overrides.push(format!("{key}={v}"));
        }
    };
    match &cli.command {
        Command::Serve(a) => {
            flag("server.listen", &a.listen);
            flag("server.http_listen", &a.http_listen);
        }
        Command::Gateway(a) => {
            flag("server.listen", &a.listen);
            flag("server.http_listen", &a.http_listen);
            flag("cluster.node_id", &a.id);
        }
        Command::Dispatch(a) => {
            flag("cluster.link_listen", &a.link_listen);
            flag("server.http_listen", &a.http_listen);
            flag("cluster.node_id", &a.id);
        }
        _ => {}
    }
    let cfg = Config::load(cli.config.as_deref(), env_vars(), &overrides)?;
    init_logging(&cfg.server.log);
    for warning in tern::env_check::unknown_env_warnings(env_vars()) {
        tracing::warn!("{warning}");
    }
    // A process given CPUs runs on them only: confined before any thread starts, so the
    // runtime (sized by the CPUs it may use), the store and the I/O threads inherit it.
    if matches!(cli.command, Command::Serve(_) | Command::Gateway(_)) {
        let cpus = tern_gateway::core::affinity::CpuList::parse(&cfg.server.io_cpus)
            .and_then(|c| c.check_allowed().map(|()| c))
            .context("server.io_cpus")?;
        cpus.confine_current_thread().context("server.io_cpus: confining the process")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(_) => rt.block_on(serve(cfg)),
        Command::Gateway(_) => rt.block_on(gateway(cfg)),
        Command::Dispatch(_) => rt.block_on(dispatch(cfg)),
        Command::Token(a) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
            if !tern_proto::ids::is_valid_id(&a.user) || !tern_proto::ids::is_valid_id(&a.device) {
                anyhow::bail!("user and device ids: 1-128 characters of letters, digits, _ . @ -");
            }
            let ttl = a.ttl.as_secs() as i64;
            let token = match &a.ed25519_key {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let key = tern_gateway::auth::Ed25519Signer::from_text(&text)
                        .with_context(|| format!("Ed25519 private key {}", path.display()))?;
                    key.with_kid(a.kid.clone()).mint_for(&a.user, &a.device, now, ttl)
                }
                None => {
                    let mut key = cfg.existing_token_key()?;
                    if a.kid.is_some() {
                        key = key.with_kid(a.kid.clone());
                    }
                    key.mint_for(&a.user, &a.device, now, ttl)
                }
            };
            println!("{token}");
            Ok(())
        }
        Command::Chat(a) => rt.block_on(tern::chat::run(&cfg, a)),
        Command::Bench(a) => rt.block_on(tern::bench::run(&cfg, a)),
    }
}

/// The environment's UTF-8 variables (`std::env::vars` would panic on any other).
fn env_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// Binds a listener with the configured accept backlog (std and tokio ask for only 128), with
/// the address in the error.
async fn bind(cfg: &Config, addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    let bind = async {
        let addr: std::net::SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(addr)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?,
        };
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(cfg.server.listen_backlog)
    };
    bind.await.with_context(|| format!("binding {what} address {addr}"))
}

/// Binds the client listeners (shared with other processes only with `server.share_port`)
/// and, unless `server.quic_listen` is "", their QUIC sockets.
fn bind_clients(cfg: &Config) -> anyhow::Result<tern_gateway::Listeners> {
    let s = &cfg.server;
    let tcp = tern_gateway::listen(s.listen, s.listen_backlog, s.io_threads, s.share_port);
    let tcp = tcp.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            if s.share_port {
                " (another process holds it without sharing; set server.share_port = true on \
                 every process meant to share the port)"
            } else {
                " (another server is running on it; processes meant to share one port must \
                 all set server.share_port = true)"
            }
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("binding client address {}{hint}", s.listen))
    })?;
    // Checked at start (`run`).
    let cpus =
        tern_gateway::core::affinity::CpuList::parse(&s.io_cpus).context("server.io_cpus")?;
    tern::tls::bind(cfg, tern::quic::bind(cfg, tcp.with_io_cpus(cpus))?)
}

fn quic_addr(l: &tern_gateway::Listeners) -> String {
    l.quic_addr().map_or_else(|| "off".into(), |a| a.to_string())
}

/// Binds the HTTP listener unless it is turned off ("").
async fn bind_http(cfg: &Config) -> anyhow::Result<Option<TcpListener>> {
    if cfg.server.http_listen.is_empty() {
        return Ok(None);
    }
    Ok(Some(bind(cfg, &cfg.server.http_listen, "HTTP").await?))
}

fn http_addr(http: &Option<TcpListener>) -> String {
    http.as_ref().and_then(|l| l.local_addr().ok()).map_or_else(|| "off".into(), |a| a.to_string())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Load (or create) the token keys before announcing the address, so that whoever reads
    // that line can read the key too.
    cfg.verifier()?;
    let listener = bind_clients(&cfg)?;
    let http = bind_http(&cfg).await?;
    let client_addr = listener.local_addr();
    // One machine-readable line on stdout, once the server is really up (store open): tests
    // and scripts read the bound addresses here.
    let line = format!(
        "tern listening client={client_addr} http={} quic={} data_dir={}",
        http_addr(&http),
        quic_addr(&listener),
        cfg.server.data_dir.display()
    );
    let ready = move || {
        println!("{line}");
        tracing::info!(%client_addr, "tern serve started");
    };
    tern::embedded::run_with_ready(&cfg, listener, http, shutdown_signal(), ready).await?;
    tracing::info!("tern serve stopped");
    Ok(())
}

async fn gateway(cfg: Config) -> anyhow::Result<()> {
    cfg.verifier()?;
    cfg.link_secrets()?;
    let id = tern::cluster::node_id(&cfg, "gw");
    let listener = bind_clients(&cfg)?;
    let http = bind_http(&cfg).await?;
    let line = format!(
        "tern gateway listening client={} http={} quic={} id={id}",
        listener.local_addr(),
        http_addr(&http),
        quic_addr(&listener)
    );
    let ready = move || println!("{line}");
    tern::cluster::run_gateway(&cfg, id, listener, http, shutdown_signal(), ready).await?;
    tracing::info!("tern gateway stopped");
    Ok(())
}

async fn dispatch(cfg: Config) -> anyhow::Result<()> {
    cfg.link_secrets()?;
    let id = tern::cluster::node_id(&cfg, "dw");
    let listener = bind(&cfg, &cfg.cluster.link_listen, "link").await?;
    let http = bind_http(&cfg).await?;
    let line = format!(
        "tern dispatch listening link={} http={} id={id}",
        listener.local_addr()?,
        http_addr(&http)
    );
    let ready = move || println!("{line}");
    tern::cluster::run_dispatch(&cfg, id, listener, http, shutdown_signal(), ready).await?;
    tracing::info!("tern dispatch stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: logs piped to a file or a collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
