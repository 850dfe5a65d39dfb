//! `tern-loadtest`: parses arguments, builds the runtime (or the mio loop), runs `bots`,
//! `swarm`, `probe` or `pairs`, writes the report.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tern_loadtest::config::{Cli, Command, Engine};
use tern_loadtest::stats::write_samples;
use tern_loadtest::{coordinator, mio_bots, pairs, probe, ramp};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bots(args) => {
            let out = match args.common.engine.resolve(args.common.quic_percent) {
                // One thread, its own event loop: no runtime.
                Engine::Mio => mio_bots::run(&args)?,
                _ => {
                    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                    rt.block_on(ramp::run(&args))?
                }
            };
            let files = [
                (&args.samples_out, &out.samples.login_us),
                (&args.delivery_samples_out, &out.samples.delivery_us),
            ];
            for (path, samples) in files {
                if let Some(path) = path {
                    write_samples(path, samples)
                        .with_context(|| format!("write {}", path.display()))?;
                }
            }
            let table = (!args.child).then(|| out.report.table());
            finish(&out.report, args.common.json.as_deref(), table)
        }
        Command::Swarm(args) => {
            let exe = std::env::current_exe().context("locate tern-loadtest")?;
            let report = coordinator::run(&args, &exe)?;
            finish(&report, args.common.json.as_deref(), Some(report.table()))
        }
        Command::Probe(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let report = rt.block_on(probe::run(&args))?;
            finish(&report, args.json.as_deref(), Some(report.table()))
        }
        Command::Pairs(args) => {
            // One thread, its own event loop: no runtime.
            let report = pairs::run(&args)?;
            finish(&report, args.json.as_deref(), Some(report.table()))?;
            // One JSON line after the table, for scripts.
            let line = serde_json::to_string(&report)?;
            writeln!(std::io::stdout().lock(), "{line}")?;
            Ok(())
        }
    }
}

fn finish(
    report: &impl Serialize,
    json: Option<&std::path::Path>,
    table: Option<String>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        let text = serde_json::to_vec_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(table) = table {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tern-loadtest report")?;
        write!(out, "{table}")?;
    }
    Ok(())
}
