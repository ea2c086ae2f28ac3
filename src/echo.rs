//! `weft transport echo`: a responder that answers every ping with its pong.
//!
//! [`serve`] is also what `weft transport ping --local-peers` runs on a thread per peer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crossbeam_channel::RecvTimeoutError;
use weft_transport::{ClusterConfig, Transport};

use crate::cli::EchoArgs;
use crate::proto;

/// How often a waiting responder looks at its stop flag and deadline.
const POLL: Duration = Duration::from_millis(50);

/// What a responder did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoCounts {
    /// Pings answered with a pong.
    pub answered: u64,
    /// Deliveries that were not pings (pongs, foreign or malformed messages).
    pub ignored: u64,
    /// Pongs the transport refused to send (each is logged).
    pub send_errors: u64,
}

/// Runs `weft transport echo`.
pub fn run(args: &EchoArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(args.target.config.as_path())?;
    let node = args.target.node;
    let config = cluster.transport_for(node)?;
    let transport = weft_transport::open(&config)
        .with_context(|| format!("cannot open the transport of node {node}"))?;
    tracing::info!(
        node = %node,
        kind = config.backend.kind(),
        capabilities = %transport.capabilities(),
        "echo responder ready"
    );
    let deadline =
        (args.duration_s > 0).then(|| Instant::now() + Duration::from_secs(args.duration_s));
    let counts = serve(transport.as_ref(), &AtomicBool::new(false), deadline)?;
    println!(
        "node {node}: answered {} pings, ignored {} other messages, {} send errors",
        counts.answered, counts.ignored, counts.send_errors
    );
    println!(
        "transport stats (node {node}): {}",
        crate::report::format_stats(&transport.stats())
    );
    Ok(())
}

/// Answers pings arriving at `transport` until `stop` is set or `deadline` passes (never,
/// if `None`). Fails only if the transport's inbox is closed under it.
pub fn serve(
    transport: &dyn Transport,
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> anyhow::Result<EchoCounts> {
    let mut counts = EchoCounts::default();
    let inbox = transport.inbox();
    while !stop.load(Ordering::Relaxed) {
        let wait = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                left.min(POLL)
            }
            None => POLL,
        };
        let delivery = match inbox.recv_timeout(wait) {
            Ok(delivery) => delivery,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                bail!("node {}: the transport's inbox closed", transport.local())
            }
        };
        let Some(pong) = proto::pong_for(&delivery.bytes) else {
            counts.ignored += 1;
            continue;
        };
        match transport.send(delivery.from, pong) {
            Ok(()) => counts.answered += 1,
            Err(e) => {
                counts.send_errors += 1;
                tracing::warn!(node = %transport.local(), to = %delivery.from, "cannot send pong: {e}");
            }
        }
    }
    Ok(counts)
}
