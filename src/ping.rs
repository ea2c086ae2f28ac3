//! `weft transport ping`: round-trip times from one node to its peers.
//!
//! Pings go one at a time: send, then wait for the matching pong or the timeout. A ping
//! whose pong does not come in time is lost; its pong, if it arrives later, is recognised by
//! its old sequence number and ignored. Sequence numbers grow across peers, so a late pong
//! from the previous peer is ignored the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use crossbeam_channel::RecvTimeoutError;
use weft_transport::{ClusterConfig, NodeId, Transport, TransportError};

use crate::cli::PingArgs;
use crate::echo::{self, EchoCounts};
use crate::latency::{Recorder, Summary};
use crate::proto::{self, Kind};
use crate::report::{format_stats, print_table};

/// Progress lines are logged only once a peer's run has lasted this long.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// How many pings to send and how long to wait for each.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Measured pings per peer.
    pub count: u64,
    /// Unmeasured pings per peer, sent first.
    pub warmup: u64,
    /// Size of each ping in bytes.
    pub size: usize,
    /// Wait for each pong before counting the ping as lost.
    pub timeout: Duration,
    /// Give up on a peer after this many consecutive lost pings (0: never).
    pub give_up_after: u64,
}

/// The outcome for one peer.
#[derive(Debug)]
pub struct PeerReport {
    /// The peer.
    pub peer: NodeId,
    /// Measured pings sent.
    pub sent: u64,
    /// Measured pings whose pong came back in time.
    pub answered: u64,
    /// Measured pings lost (timed out, or refused by the transport).
    pub lost: u64,
    /// Warmup pings lost.
    pub warmup_lost: u64,
    /// Pongs that arrived after their ping had timed out, and were ignored.
    pub late_pongs: u64,
    /// Other deliveries ignored while waiting (pings from elsewhere, foreign messages).
    pub ignored: u64,
    /// Whether pinging stopped early after `give_up_after` losses in a row.
    pub gave_up: bool,
    /// Round-trip times of the answered measured pings.
    pub rtt: Recorder,
    /// Wall time of the whole run against this peer, warmup included.
    pub elapsed: Duration,
}

impl PeerReport {
    /// The RTT distribution, if any pong came back.
    pub fn summary(&self) -> Option<Summary> {
        self.rtt.summary()
    }
}

/// Sends pings from one transport and matches the pongs.
pub struct Pinger<'a> {
    transport: &'a dyn Transport,
    plan: &'a Plan,
    /// Sequence number of the next ping; never reused within a run.
    next_seq: u64,
}

impl<'a> Pinger<'a> {
    /// A pinger sending from `transport` as `plan` says.
    pub fn new(transport: &'a dyn Transport, plan: &'a Plan) -> Pinger<'a> {
        Pinger {
            transport,
            plan,
            next_seq: 1,
        }
    }

    /// Runs the warmup and then the measured pings against `peer`.
    pub fn ping_peer(&mut self, peer: NodeId) -> anyhow::Result<PeerReport> {
        let plan = self.plan;
        let start = Instant::now();
        let mut report = PeerReport {
            peer,
            sent: 0,
            answered: 0,
            lost: 0,
            warmup_lost: 0,
            late_pongs: 0,
            ignored: 0,
            gave_up: false,
            rtt: Recorder::new()?,
            elapsed: Duration::ZERO,
        };
        tracing::info!(
            "pinging node {peer}: {} warmup + {} measured pings of {} B",
            plan.warmup,
            plan.count,
            plan.size
        );
        let step = plan.count.div_ceil(10).max(1);
        let mut lost_in_row = 0u64;
        for i in 0..plan.warmup + plan.count {
            let measured = i >= plan.warmup;
            let rtt = self.ping_once(peer, &mut report)?;
            if measured {
                report.sent += 1;
            }
            match rtt {
                Some(rtt) => {
                    lost_in_row = 0;
                    if measured {
                        report.answered += 1;
                        report.rtt.record(rtt);
                    }
                }
                None => {
                    lost_in_row += 1;
                    if measured {
                        report.lost += 1;
                    } else {
                        report.warmup_lost += 1;
                    }
                    if plan.give_up_after > 0 && lost_in_row >= plan.give_up_after {
                        tracing::warn!(
                            "node {peer}: {lost_in_row} pings in a row lost, giving up on it"
                        );
                        report.gave_up = true;
                        break;
                    }
                }
            }
            if measured && report.sent % step == 0 && start.elapsed() >= QUIET_FOR {
                tracing::info!(
                    "node {peer}: {}/{} pings ({}%), {} lost",
                    report.sent,
                    plan.count,
                    report.sent * 100 / plan.count,
                    report.lost
                );
            }
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Sends one ping and waits for its pong: `Some(rtt)`, or `None` if it was lost. Fails
    /// only on errors that retrying cannot fix (unknown peer, message too large, closed).
    fn ping_once(
        &mut self,
        peer: NodeId,
        report: &mut PeerReport,
    ) -> anyhow::Result<Option<Duration>> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ping = proto::encode(Kind::Ping, seq, self.plan.size);
        let start = Instant::now();
        let deadline = start + self.plan.timeout;
        match self.transport.send(peer, ping) {
            Ok(()) => {}
            // Transient: wait out the timeout (late pongs drain meanwhile) and count it lost.
            Err(e @ (TransportError::WindowFull { .. } | TransportError::Io(_))) => {
                tracing::debug!("ping {seq} to node {peer} not sent: {e}");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot ping node {peer}")),
        }
        let inbox = self.transport.inbox();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let delivery = match inbox.recv_timeout(left) {
                Ok(delivery) => delivery,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "node {}: the transport's inbox closed",
                        self.transport.local()
                    )
                }
            };
            match proto::decode(&delivery.bytes) {
                Some((Kind::Pong, s)) if s == seq && delivery.from == peer => {
                    return Ok(Some(start.elapsed()));
                }
                Some((Kind::Pong, s)) if s < seq => report.late_pongs += 1,
                _ => report.ignored += 1,
            }
        }
        tracing::debug!("ping {seq} to node {peer} timed out");
        Ok(None)
    }
}

/// Runs `weft transport ping`.
pub fn run(args: &PingArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(args.target.config.as_path())?;
    let local = args.target.node;
    let config = cluster.transport_for(local)?;
    let local_peers: Vec<NodeId> = match args.local_peers {
        true => cluster
            .node_ids()
            .into_iter()
            .filter(|id| *id != local)
            .collect(),
        false => Vec::new(),
    };
    let (transport, responders) = open_members(&cluster, local, &local_peers)?;
    let caps = transport.capabilities();
    ensure!(
        args.size >= proto::HEADER_LEN,
        "--size {} is too small: a ping needs at least {} bytes",
        args.size,
        proto::HEADER_LEN
    );
    ensure!(
        args.size <= caps.max_message,
        "--size {} exceeds the transport's largest message ({} bytes)",
        args.size,
        caps.max_message
    );
    let peers = match args.peer {
        Some(peer) => {
            ensure!(peer != local, "--peer {peer} is the local node");
            ensure!(
                transport.peers().contains(&peer),
                "--peer {peer} is not a member of cluster {}",
                cluster.cluster_id
            );
            vec![peer]
        }
        None => transport.peers().to_vec(),
    };
    ensure!(!peers.is_empty(), "node {local} has no peers to ping");
    let plan = Plan {
        count: args.count,
        warmup: args.warmup,
        size: args.size,
        timeout: Duration::from_millis(args.timeout_ms),
        give_up_after: args.give_up_after,
    };

    println!(
        "cluster {}, node {local}, {} transport: {}",
        cluster.cluster_id,
        config.backend.kind(),
        caps
    );
    println!(
        "{} pings of {} B per peer after {} warmup, one at a time, timeout {} ms",
        plan.count, plan.size, plan.warmup, args.timeout_ms
    );

    let measure = || -> anyhow::Result<Vec<PeerReport>> {
        let mut pinger = Pinger::new(transport.as_ref(), &plan);
        peers.iter().map(|peer| pinger.ping_peer(*peer)).collect()
    };
    let (reports, responders) = if args.local_peers {
        let (reports, responders) = with_local_responders(responders, measure)?;
        (reports, Some(responders))
    } else {
        (measure()?, None)
    };

    println!();
    print_table(&reports, &plan);
    if let Some(responders) = responders {
        let answered: Vec<String> = responders
            .iter()
            .map(|(id, c)| format!("node {id} answered {}", c.answered))
            .collect();
        println!("echo responders in this process: {}", answered.join(", "));
    }
    println!(
        "transport stats (node {local}): {}",
        format_stats(&transport.stats())
    );

    let silent: Vec<String> = reports
        .iter()
        .filter(|r| r.answered == 0)
        .map(|r| r.peer.to_string())
        .collect();
    ensure!(
        silent.is_empty(),
        "no pong came back from node(s) {}: is `weft transport echo` running there?",
        silent.join(", ")
    );
    Ok(())
}

/// A member's open transport.
type Opened = (NodeId, Box<dyn Transport>);

/// Opens `local`'s transport and those of `others`, all at once: on a fabric whose open
/// waits for the peers (real RDMA's queue pair handshake), one after another would stall.
pub fn open_members(
    cluster: &ClusterConfig,
    local: NodeId,
    others: &[NodeId],
) -> anyhow::Result<(Box<dyn Transport>, Vec<Opened>)> {
    let mut opened: Vec<Opened> = std::thread::scope(|scope| {
        let opening: Vec<_> = std::iter::once(local)
            .chain(others.iter().copied())
            .map(|id| {
                let config = cluster.transport_for(id);
                scope.spawn(move || -> anyhow::Result<Opened> {
                    let t = weft_transport::open(&config?)
                        .with_context(|| format!("cannot open the transport of node {id}"))?;
                    Ok((id, t))
                })
            })
            .collect();
        opening
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("opening a transport panicked"))?
            })
            .collect::<anyhow::Result<_>>()
    })?;
    let (_, transport) = opened.remove(0);
    Ok((transport, opened))
}

/// Answers pings on each of `responders` from its own thread while `f` runs, then stops
/// them. Returns what `f` returned and what each responder did.
pub fn with_local_responders<T>(
    responders: Vec<Opened>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<(NodeId, EchoCounts)>)> {
    tracing::info!(
        "started {} echo responders in this process",
        responders.len()
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Stops the responders however `f` ends, a panic included, so the scope can join.
        let _stop_on_exit = StopOnDrop(&stop);
        let mut handles = Vec::new();
        for (id, transport) in &responders {
            let stop = &stop;
            let handle = std::thread::Builder::new()
                .name(format!("echo-{id}"))
                .spawn_scoped(scope, move || echo::serve(transport.as_ref(), stop, None))
                .context("cannot start an echo responder thread")?;
            handles.push((*id, handle));
        }
        let result = f();
        stop.store(true, Ordering::Relaxed);
        let mut counts = Vec::new();
        for (id, handle) in handles {
            match handle.join() {
                Ok(Ok(c)) => counts.push((id, c)),
                Ok(Err(e)) => return Err(e.context(format!("echo responder of node {id}"))),
                Err(_) => bail!("echo responder of node {id} panicked"),
            }
        }
        Ok((result?, counts))
    })
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// An in-process cluster on the `mem` fabric; `id` keeps tests' fabrics apart.
    fn mem_cluster(id: u64) -> ClusterConfig {
        cluster(id, "kind = \"mem\"")
    }

    fn cluster(id: u64, transport: &str) -> ClusterConfig {
        let text = format!(
            r#"
[cluster]
id = {id}
nodes = [
  {{ id = 1, addr = "127.0.0.1:1" }},
  {{ id = 2, addr = "127.0.0.1:2" }},
  {{ id = 3, addr = "127.0.0.1:3" }},
]

[transport]
require = ["reliable", "fifo_per_peer"]
{transport}
"#
        );
        ClusterConfig::parse(&text, Path::new("test-cluster.toml")).unwrap()
    }

    fn plan(count: u64, timeout: Duration, give_up_after: u64) -> Plan {
        Plan {
            count,
            warmup: 5,
            size: 64,
            timeout,
            give_up_after,
        }
    }

    /// Node 1's transport, its reports, and what each responder did.
    type LocalPings = (
        Box<dyn Transport>,
        Vec<PeerReport>,
        Vec<(NodeId, EchoCounts)>,
    );

    /// Node 1 of `cluster` pings nodes 2 and 3, `count` times each, while they answer from
    /// this process.
    fn ping_local_peers(cluster: &ClusterConfig, count: u64) -> LocalPings {
        let (transport, peers) = open_members(cluster, NodeId(1), &[NodeId(2), NodeId(3)]).unwrap();
        let plan = plan(count, Duration::from_secs(5), 0);
        let (reports, responders) = with_local_responders(peers, || {
            let mut pinger = Pinger::new(transport.as_ref(), &plan);
            transport
                .peers()
                .iter()
                .map(|peer| pinger.ping_peer(*peer))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap();
        (transport, reports, responders)
    }

    #[test]
    fn pings_every_local_peer_and_stops_the_responders() {
        let (_, reports, responders) = ping_local_peers(&mem_cluster(9_001), 50);
        assert_eq!(reports.len(), 2);
        for r in &reports {
            assert_eq!((r.sent, r.answered, r.lost), (50, 50, 0), "{r:?}");
            assert!(!r.gave_up);
            let s = r.summary().unwrap();
            assert_eq!(s.count, 50);
            assert!(s.min_ns <= s.p50_ns && s.p50_ns <= s.max_ns, "{s:?}");
        }
        let ids: Vec<NodeId> = responders.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![NodeId(2), NodeId(3)]);
        for (_, counts) in responders {
            assert_eq!(counts.answered, 55, "{counts:?}");
        }
    }

    #[test]
    fn pings_over_emulated_rdma_in_both_completion_modes() {
        for (id, mode) in [(9_003, "busy"), (9_004, "event")] {
            let rdma = format!(
                "kind = \"rdma\"\n[transport.rdma]\ndevice = \"emulated\"\ncompletion = \"{mode}\""
            );
            let (transport, reports, _) = ping_local_peers(&cluster(id, &rdma), 100);
            assert!(
                transport.capabilities().reliable,
                "no layer stacked on rdma"
            );
            for r in &reports {
                assert_eq!((r.sent, r.answered, r.lost), (100, 100, 0), "{mode}: {r:?}");
            }
        }
    }

    #[test]
    fn a_silent_peer_times_out_and_is_given_up() {
        let cluster = mem_cluster(9_002);
        let transport = weft_transport::open(&cluster.transport_for(NodeId(1)).unwrap()).unwrap();
        // Node 2 exists on the fabric but nobody answers its pings.
        let _silent = weft_transport::open(&cluster.transport_for(NodeId(2)).unwrap()).unwrap();
        let plan = plan(100, Duration::from_millis(20), 3);
        let start = Instant::now();
        let report = Pinger::new(transport.as_ref(), &plan)
            .ping_peer(NodeId(2))
            .unwrap();
        assert!(report.gave_up, "{report:?}");
        assert_eq!(report.answered, 0);
        assert_eq!(report.warmup_lost, 3);
        assert!(report.summary().is_none());
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
    }
}
