//! `tern-loadtest`: parses arguments, builds the runtime, runs `bots` or `swarm`, writes the
//! report.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use tern_loadtest::config::{Cli, Command};
use tern_loadtest::report::Report;
use tern_loadtest::{coordinator, ramp};

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
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let out = rt.block_on(ramp::run(&args))?;
            if let Some(path) = &args.samples_out {
                let mut text = String::with_capacity(out.samples_us.len() * 8);
                for s in &out.samples_us {
                    text.push_str(&s.to_string());
                    text.push('\n');
                }
                std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
            }
            finish(&out.report, args.common.json.as_deref(), !args.child)
        }
        Command::Swarm(args) => {
            let exe = std::env::current_exe().context("locate tern-loadtest")?;
            let report = coordinator::run(&args, &exe)?;
            finish(&report, args.common.json.as_deref(), true)
        }
    }
}

fn finish(report: &Report, json: Option<&std::path::Path>, table: bool) -> anyhow::Result<()> {
    if let Some(path) = json {
        let text = serde_json::to_vec_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    if table {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tern-loadtest report")?;
        write!(out, "{}", report.table())?;
    }
    Ok(())
}
