//! The command tree of the `weft` binary, as clap derive types.
//!
//! Only parsing lives here; each command's behaviour is in its own module
//! ([`crate::ping`], [`crate::echo`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use weft::local_cluster::Fabric;
use weft_transport::NodeId;

/// The command tree, shown after `weft --help`.
const COMMAND_TREE: &str = "\
Command tree:
  weft demo             a 3-node cluster in separate processes, a workload, a leader crash
  weft bench            rafty's benchmark matrix and election speed, as HTML + JSON
  weft fedavg           federated learning with a rotating, Raft-elected aggregator
                        (it runs a `weft fedavg-participant` beside each node)
  weft node             run one cluster member (durable log, transport, client service)
  weft kv               get, put, del, cas, all against a running cluster
  weft status           every node's role, term, leader, commit and rates
  weft cluster          add, learner, remove, transfer: membership and leadership
  weft learn            learn an atomic-commit protocol (DQN or z3) and prove it
  weft verify           prove a saved protocol with both verifiers, or show a counterexample
  weft commit           run one atomic-commit instance of a saved protocol at one node
  weft transport ping   measure round-trip times from one node to its peers
  weft transport echo   answer pings for one node (the other end of `ping`)
  weft vortex-switch    run the Data Vortex switch emulator that `vortex` clusters attach to

Run `weft <COMMAND> --help` for the options of each.";

/// weft: Raft consensus and learned atomic commit on a pluggable, hardware-aware transport
/// stack.
///
/// Logs go to stderr; set RUST_LOG (for example `RUST_LOG=debug` or
/// `RUST_LOG=weft=debug,weft_transport=info`) to change what is logged. The default is `info`.
#[derive(Debug, Parser)]
#[command(name = "weft", version, propagate_version = true, after_help = COMMAND_TREE)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a 3-node cluster as separate processes on loopback, run a mixed workload,
    /// kill the leader mid-run, and check that no acknowledged write was lost.
    Demo(DemoArgs),
    /// Benchmark writes over servers × clients × entries × entry size on fresh local
    /// clusters (or a running one), then election speed; writes report.html and
    /// report.json and prints a summary table.
    Bench(BenchArgs),
    /// Federated learning on a loopback cluster: every node trains on a private shard of
    /// the digits data set, the Raft leader aggregates updates encrypted to its fresh key,
    /// leadership rotates, and each round's accuracy is compared with central training.
    Fedavg(FedavgArgs),
    /// Take part in a federated run beside one node until its last round is committed
    /// (`weft fedavg` starts one per node).
    FedavgParticipant(FedavgParticipantArgs),
    /// Run one cluster member until killed: its durable log, transport and client service.
    Node(RunNodeArgs),
    /// Read and write the replicated dictionary.
    Kv(KvArgs),
    /// Show every node's diagnostic.
    Status(StatusArgs),
    /// Change membership or hand over leadership.
    Cluster(ClusterArgs),
    /// Learn (synthesize) an atomic-commit protocol, verify it, and save it with a drawing.
    Learn(LearnArgs),
    /// Verify a saved protocol with the explicit-state enumerator and with Z3.
    Verify(VerifyArgs),
    /// Run one atomic-commit instance of a saved protocol at one node of a cluster (every
    /// node runs the same command with its own vote).
    Commit(CommitArgs),
    /// Exercise a cluster's transport directly: measure round trips, answer them.
    #[command(subcommand)]
    Transport(TransportCommand),
    /// Run the Data Vortex switch emulator until killed: `kind = "vortex"` nodes attach to
    /// it with `fabric = "unix:SOCKET"`.
    VortexSwitch(VortexSwitchArgs),
}

/// Arguments of `weft vortex-switch`.
#[derive(Debug, Args)]
pub struct VortexSwitchArgs {
    /// The Unix socket to listen on (a stale socket file is replaced).
    pub socket: PathBuf,
    /// Delay each epoch close by a random time up to this many microseconds (latency
    /// jitter; nothing is lost).
    #[arg(long, default_value_t = 0)]
    pub jitter_us: u64,
    /// Admit only these node ids (comma-separated); any other is refused. Default: any.
    #[arg(long, value_delimiter = ',')]
    pub members: Option<Vec<u32>>,
    /// Evict a member that has not entered the barrier this many milliseconds after
    /// another member did, so that a stalled process does not hold up the others (it
    /// attaches again when it resumes); 0 waits forever. Default: the emulator's, 100 ms.
    #[arg(long)]
    pub barrier_deadline_ms: Option<u64>,
}

/// `weft transport ...`
#[derive(Debug, Subcommand)]
pub enum TransportCommand {
    /// Measure round-trip times from one node to its peers.
    ///
    /// Sends `--count` pings to each peer one at a time (send, then wait for the echo) after
    /// `--warmup` unmeasured ones, and prints the RTT distribution per peer, the lost pings,
    /// and the transport's capabilities and counters. The peers must run
    /// `weft transport echo`, or pass `--local-peers` to run them in this process.
    Ping(PingArgs),
    /// Answer pings for one node until killed (or for `--duration-s`).
    Echo(EchoArgs),
}

/// Which specification a protocol must meet.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SpecName {
    /// The paper's P1-P5 under arbitrary message loss.
    Paper,
    /// Non-blocking atomic commit under up to `--t` crashes.
    Nbac,
}

/// How to obtain the protocol.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LearnMethod {
    /// Counterexample-guided synthesis with Z3.
    Smt,
    /// Deep Q-learning by self-play with counterexample feedback, trained on
    /// counterfactual targets (each consulted entry's every choice, replayed).
    Dqn,
    /// Deep Q-learning with the paper's temporal-difference targets (slower where
    /// rounds must be counted, as for two crashes).
    DqnTd,
}

impl LearnMethod {
    /// The method as `--method` spells it, for reports and saved protocols.
    pub fn name(self) -> &'static str {
        match self {
            LearnMethod::Smt => "smt",
            LearnMethod::Dqn => "dqn",
            LearnMethod::DqnTd => "dqn-td",
        }
    }
}

/// Arguments of `weft learn`.
#[derive(Debug, Args)]
pub struct LearnArgs {
    /// The specification.
    #[arg(long, value_enum, default_value = "paper")]
    pub spec: SpecName,
    /// Crashes tolerated (nbac).
    #[arg(long, default_value_t = 1)]
    pub t: usize,
    /// Processes; a list (`--n 3,4`, symmetric encoding) trains and proves one table for
    /// every size given, so that it extrapolates to larger clusters.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    pub n: Vec<usize>,
    /// Rounds (default: 2 for paper, t + 1 for nbac).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Anonymous states besides LocalCommit, LocalAbort, Commit and Abort.
    #[arg(long, default_value_t = 1)]
    pub states: u8,
    /// Use the paper's vector encoding instead of the symmetric one.
    #[arg(long)]
    pub vector: bool,
    /// Largest count the symmetric encoding distinguishes.
    #[arg(long, default_value_t = 2)]
    pub cap: u8,
    /// How to obtain the protocol.
    #[arg(long, value_enum, default_value = "dqn")]
    pub method: LearnMethod,
    /// Width of the learner's hidden layers (dqn).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Seed of the learner (training is reproducible).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time budget in seconds.
    #[arg(long, default_value_t = 300)]
    pub budget_s: u64,
    /// Where to save the protocol (a `.dot` and, with Graphviz, an `.svg` go beside it).
    #[arg(long, default_value = "protocol.json")]
    pub out: PathBuf,
    /// Instead of one protocol, run the measurement matrix (paper over 10 seeds;
    /// nbac t = 1 and 2 for n = 3, 4, 5 by each method; Z3 verification times; how far a
    /// symmetric table learned at n = 3, or at 3 and 4, extrapolates) and write it to this
    /// JSON file.
    /// `--budget-s` bounds each learning run.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The largest process count the report's extrapolation tries (Z3 time grows fast:
    /// about 4 minutes at n = 7 for t = 2).
    #[arg(long, default_value_t = 6)]
    pub report_max_n: usize,
}

/// Arguments of `weft commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The saved protocol.
    #[arg(long, value_name = "FILE")]
    pub protocol: PathBuf,
    /// Cluster config and local node.
    #[command(flatten)]
    pub target: NodeArgs,
    /// This node's vote.
    #[arg(long, value_enum)]
    pub vote: Vote,
    /// Instance number (every participant uses the same).
    #[arg(long, default_value_t = 1)]
    pub instance: u64,
    /// How long a round waits for peers before counting them as lost.
    #[arg(long, default_value_t = 500)]
    pub round_timeout_ms: u64,
}

/// A participant's vote.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Vote {
    /// Vote to commit.
    Commit,
    /// Vote to abort.
    Abort,
}

/// Arguments of `weft verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The saved protocol.
    #[arg(long, value_name = "FILE")]
    pub protocol: PathBuf,
    /// Verify for this many processes instead (symmetric protocols only).
    #[arg(long)]
    pub n: Option<usize>,
    /// Verify over this many rounds instead.
    #[arg(long)]
    pub rounds: Option<usize>,
}

/// Arguments of `weft demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Operations in the workload (70 % writes, 30 % linearizable reads).
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: u64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Keep the cluster's data and logs (in the system temp directory) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// The fabric the cluster runs on.
    #[arg(long, value_enum, default_value = "udp")]
    pub fabric: Fabric,
}

/// Arguments of `weft bench`. Lists are comma-separated; the defaults are rafty's local
/// matrix (24 cells) and 20 election trials on 5 nodes.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The fabric of the local clusters.
    #[arg(long, value_enum, default_value = "udp")]
    pub fabric: Fabric,
    /// Benchmark the running cluster this config file describes instead (its nodes need
    /// `client` addresses); the election test is skipped, since it kills nodes.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [3, 5])]
    pub servers: Vec<u32>,
    /// Concurrent clients (one connection each).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 256])]
    pub clients: Vec<u32>,
    /// Puts per run.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    pub entries: Vec<u64>,
    /// Puts each client keeps in flight on its connection (1: one request, then its
    /// answer, as rafty's clients did; more pipelines them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pipeline: u32,
    /// Bytes per value.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    pub sizes: Vec<usize>,
    /// Leader kills in the election test (0 skips it).
    #[arg(long, default_value_t = 20)]
    pub election_trials: u32,
    /// Cluster size of the election test.
    #[arg(long, default_value_t = 5)]
    pub election_servers: u32,
    /// Applied entries between snapshots on the local clusters (default: the node's own
    /// default); compare values to choose one.
    #[arg(long, value_name = "N")]
    pub snapshot_entries: Option<u64>,
    /// Directory for report.html and report.json.
    #[arg(long, value_name = "DIR", default_value = "weft-bench-report")]
    pub out: PathBuf,
}

/// Arguments of `weft fedavg`.
#[derive(Debug, Args)]
pub struct FedavgArgs {
    /// Nodes, each with its own shard and participant (at least 3 with `--crash-round`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Rounds of federated averaging.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Local epochs per round (the centralized baseline gets as many over all the data).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.3)]
    pub lr: f64,
    /// Hidden units (0: softmax regression).
    #[arg(long, default_value_t = 32)]
    pub hidden: usize,
    /// Hand leadership to the next node after every this many rounds (0: never).
    #[arg(long, default_value_t = 2)]
    pub rotate_every: u64,
    /// Seed of the data split, the initial model and the local shuffles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// SIGKILL the aggregator's node and participant in the middle of this round (or of
    /// the first later round caught in the middle), then restart them.
    #[arg(long, value_name = "ROUND")]
    pub crash_round: Option<u64>,
    /// Write the per-round figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Keep the cluster's data and logs (in the system temp directory) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// The fabric the cluster runs on.
    #[arg(long, value_enum, default_value = "udp")]
    pub fabric: Fabric,
}

/// Arguments of `weft fedavg-participant`.
#[derive(Debug, Args)]
pub struct FedavgParticipantArgs {
    /// The cluster config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// The federated run's settings (TOML, as `weft fedavg` writes them).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The node this participant sits beside (its shard is that node's).
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub node: NodeId,
}

/// Arguments of `weft node`.
#[derive(Debug, Args)]
pub struct RunNodeArgs {
    /// The cluster config file (TOML); the node's entry needs a `client` address.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// This node's id.
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub id: NodeId,
    /// Where the write-ahead log and snapshots live (default: `weft-data/node-N` beside
    /// the config file).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `weft kv`.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// The cluster config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Read from whichever node answers, without confirming it is current.
    #[arg(long)]
    pub stale: bool,
    /// The operation.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// `weft kv ...`
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
    },
    /// Print the whole dictionary.
    All,
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove a key.
    Del {
        /// The key.
        key: String,
    },
    /// Set a key only if it holds an expected value.
    Cas {
        /// The key.
        key: String,
        /// The value required (`--expected` omitted: the key must be absent).
        #[arg(long)]
        expected: Option<String>,
        /// The new value (omitted: remove the key).
        #[arg(long)]
        new: Option<String>,
    },
}

/// Arguments of `weft status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The cluster config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Arguments of `weft cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The cluster config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The change.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// `weft cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make a node a voter (through joint consensus).
    Add {
        /// The node.
        #[arg(value_parser = parse_node_id)]
        node: NodeId,
    },
    /// Add a node as a learner (it receives the log but does not vote).
    Learner {
        /// The node.
        #[arg(value_parser = parse_node_id)]
        node: NodeId,
    },
    /// Remove a node.
    Remove {
        /// The node.
        #[arg(value_parser = parse_node_id)]
        node: NodeId,
    },
    /// Hand leadership to a node.
    Transfer {
        /// The node.
        #[arg(value_parser = parse_node_id)]
        node: NodeId,
    },
}

/// Which cluster, and which member of it this process acts as.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The cluster config file (TOML), for example `examples/cluster-udp.toml`.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The member of the cluster this process acts as.
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub node: NodeId,
}

/// Arguments of `weft transport ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Cluster config and local node.
    #[command(flatten)]
    pub target: NodeArgs,
    /// Ping only this peer (default: every other member, one after the other).
    #[arg(long, value_name = "M", value_parser = parse_node_id)]
    pub peer: Option<NodeId>,
    /// Measured pings per peer.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Size of each ping and pong in bytes (at least 9: a kind byte and a u64 sequence
    /// number, then padding).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub size: usize,
    /// Unmeasured pings per peer sent first, to warm caches, sockets and layer state.
    #[arg(long, default_value_t = 500)]
    pub warmup: u64,
    /// Run echo responders for every other member inside this process (each on its own
    /// thread with its own transport), so one command measures loopback round trips.
    #[arg(long)]
    pub local_peers: bool,
    /// How long to wait for each pong before counting the ping as lost, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Stop pinging a peer after this many pings in a row are lost, and report it as
    /// unreachable (0: never give up).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub give_up_after: u64,
}

/// Arguments of `weft transport echo`.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Cluster config and local node.
    #[command(flatten)]
    pub target: NodeArgs,
    /// Stop after this many seconds (0: run until killed).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub duration_s: u64,
}

/// Parses a node id as it appears in the cluster config: a plain `u32`.
fn parse_node_id(s: &str) -> Result<NodeId, String> {
    s.trim()
        .parse::<u32>()
        .map(NodeId)
        .map_err(|e| format!("`{s}` is not a node id (an unsigned 32-bit number): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ping_defaults() {
        let cli = Cli::try_parse_from([
            "weft",
            "transport",
            "ping",
            "--config",
            "c.toml",
            "--node",
            "1",
        ])
        .unwrap();
        let Command::Transport(TransportCommand::Ping(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.target.node, NodeId(1));
        assert_eq!(args.peer, None);
        assert_eq!(args.count, 10_000);
        assert_eq!(args.size, 64);
        assert_eq!(args.warmup, 500);
        assert!(!args.local_peers);
        assert_eq!(args.timeout_ms, 2000);
    }

    #[test]
    fn rejects_bad_node_ids_and_zero_counts() {
        for argv in [
            &["weft", "transport", "echo", "--config", "c", "--node", "x"][..],
            &["weft", "transport", "echo", "--config", "c", "--node", "-1"][..],
            &[
                "weft",
                "transport",
                "ping",
                "--config",
                "c",
                "--node",
                "1",
                "--count",
                "0",
            ][..],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?} parsed");
        }
    }
}
