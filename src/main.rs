//! `weft`: the command line of weft, Raft consensus and a learned atomic-commit runtime on a
//! pluggable, hardware-aware transport stack.
//!
//! `weft node` runs a cluster member, `weft kv`, `weft status` and `weft cluster` talk to a
//! running cluster, `weft demo` shows it all on loopback, and `weft transport ping|echo`
//! measure the fabric underneath. Run `weft --help` for the command tree.

mod bench_cmd;
mod cli;
mod demo;
mod echo;
mod fedavg_cmd;
mod kv_cmd;
mod latency;
mod learn_cmd;
mod learn_report;
mod node_cmd;
mod ping;
mod proto;
mod report;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, TransportCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Kv(_) | Command::Status(_) | Command::Cluster(_) | Command::Verify(_)
    ) {
        end_quietly_on_a_closed_pipe();
    }
    init_logging();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::debug!("{err:?}");
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Lets the kernel end the process when its output pipe closes (`weft status | head`), as
/// other command-line tools do, instead of the panic Rust's ignored SIGPIPE leads to in
/// `println!`. Only for commands that start nothing: a signal ends a process without
/// unwinding, and the commands that start node processes stop them while unwinding.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restoring a signal's default disposition at start-up, before any thread
    // exists, has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The error and its causes joined by `: `, leaving out a cause whose text the message
/// before it already contains (errors that print their source themselves).
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if previous.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

/// Dispatches a parsed command line.
fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Fedavg(args) => fedavg_cmd::run(args),
        Command::FedavgParticipant(args) => fedavg_cmd::run_participant(args),
        Command::Node(args) => node_cmd::run(args),
        Command::Kv(args) => kv_cmd::run_kv(args),
        Command::Status(args) => kv_cmd::run_status(args),
        Command::Cluster(args) => kv_cmd::run_cluster(args),
        Command::Learn(args) => learn_cmd::run_learn(args),
        Command::Verify(args) => learn_cmd::run_verify(args),
        Command::Commit(args) => learn_cmd::run_commit(args),
        Command::Transport(TransportCommand::Ping(args)) => ping::run(args),
        Command::Transport(TransportCommand::Echo(args)) => echo::run(args),
        Command::VortexSwitch(args) => vortex_switch(args),
    }
}

/// `weft vortex-switch`: serves the emulated fabric until the process is killed.
fn vortex_switch(args: &cli::VortexSwitchArgs) -> anyhow::Result<()> {
    let defaults = hw_sim::vortex::SwitchConfig::default();
    let cfg = hw_sim::vortex::SwitchConfig {
        jitter: std::time::Duration::from_micros(args.jitter_us),
        barrier_deadline: match args.barrier_deadline_ms {
            None => defaults.barrier_deadline,
            Some(0) => None,
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
        },
        members: args.members.as_ref().map(|m| m.iter().copied().collect()),
        ..defaults
    };
    let server = hw_sim::vortex::SwitchServer::bind(&args.socket, cfg)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    println!(
        "vortex switch listening: nodes attach with fabric = \"{}\"",
        server.fabric()
    );
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_skips_causes_already_printed() {
        let io = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(io)
            .context("config.toml: cannot read: disk on fire")
            .context("starting node 1");
        assert_eq!(
            error_chain(&err),
            "starting node 1: config.toml: cannot read: disk on fire"
        );
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
