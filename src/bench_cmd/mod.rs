//! `weft bench`: rafty's local benchmark matrix — servers × clients × entries × entry size —
//! on fresh clusters of `weft node` processes (or against a running cluster named by its
//! config file), then the election-speed test, written as `report.json` and a
//! self-contained `report.html` with plots, and printed as a table.

mod baseline;
mod election;
mod report;
mod svg;
mod workload;

use std::time::Duration;

use anyhow::Context;
use weft::local_cluster::LocalCluster;
use weft_raft::client::{Client, ClientConfig};
use weft_transport::ClusterConfig;

use crate::cli::BenchArgs;
use report::{Machine, Report};

/// How long a client keeps retrying one request (through a leader change, say).
const CLIENT_PATIENCE: Duration = Duration::from_secs(20);

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let cells: Vec<(u32, u64, usize, u32)> = args
        .servers
        .iter()
        .flat_map(|&s| {
            args.entries.iter().flat_map(move |&e| {
                args.sizes
                    .iter()
                    .flat_map(move |&z| args.clients.iter().map(move |&c| (s, e, z, c)))
            })
        })
        .collect();
    let mut report = Report {
        transport: match &args.cluster {
            Some(path) => format!("running cluster {}", path.display()),
            None => format!("{:?}", args.fabric).to_lowercase(),
        },
        machine: Machine::probe(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        snapshot_entries: args.snapshot_entries,
        baseline: None,
        cells: Vec::new(),
        elections: None,
    };
    let work = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    // The floor, on the file system the local nodes write to, and the ceiling.
    let floor = baseline::Baseline::measure(
        &work.join("baseline"),
        &args.servers,
        &args.clients,
        args.pipeline,
    )?;
    eprintln!(
        "bench: floor: loopback TCP round trip p50 {:.3} ms, fdatasync p50 {:.3} ms (CPU {:.1} µs each; {}); echo ceiling: {}",
        floor.tcp_round_trip.p50_ns as f64 / 1e6,
        floor.fdatasync.p50_ns as f64 / 1e6,
        floor.fdatasync_cpu_ns as f64 / 1e3,
        floor.shared_line(),
        floor.ceiling_line()
    );
    report.baseline = Some(floor);
    let result = match &args.cluster {
        Some(path) => run_remote(args, path, &mut report),
        None => run_local(args, &cells, &work, &mut report),
    };
    match &result {
        Ok(()) => drop(std::fs::remove_dir_all(&work)),
        Err(_) => eprintln!("bench: node logs kept in {}", work.display()),
    }
    result?;
    report
        .write(&args.out)
        .with_context(|| format!("writing the report into {}", args.out.display()))?;
    println!();
    print!("{}", report.table());
    println!(
        "\nreport: {} (raw numbers: {})",
        args.out.join("report.html").display(),
        args.out.join("report.json").display()
    );
    Ok(())
}

/// Every cell on a fresh local cluster (so each run starts from an empty log and its disk
/// figure is its own), then the elections on one more.
fn run_local(
    args: &BenchArgs,
    cells: &[(u32, u64, usize, u32)],
    work: &std::path::Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    eprintln!(
        "bench: {} cells on local {:?} clusters{}",
        cells.len(),
        args.fabric,
        if args.election_trials > 0 {
            format!(", then {} election trials", args.election_trials)
        } else {
            String::new()
        }
    );
    for (i, &(servers, entries, size, clients)) in cells.iter().enumerate() {
        let dir = work.join(format!("cell-{i}"));
        let cluster = start(&dir, &exe, servers, args)?;
        let mut cell = workload::run(servers, clients, entries, size, args.pipeline, &|| {
            cluster.client(CLIENT_PATIENCE)
        })
        .with_context(|| format!("cell {servers} servers, {clients} clients"))?;
        if let Some((leader, _)) = cluster.leader(Duration::from_secs(5)) {
            cell.leader_disk_bytes = Some(cluster.disk_bytes(leader));
        }
        eprintln!(
            "[{:>2}/{}] {servers} servers, {clients:>3} clients{}, {entries:>5} × {size:>4} B: \
             {:>7.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            i + 1,
            cells.len(),
            baseline::in_flight(args.pipeline),
            cell.requests_per_s,
            cell.latency.p50_ns as f64 / 1e6,
            cell.latency.p99_ns as f64 / 1e6
        );
        report.cells.push(cell);
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    }
    if args.election_trials > 0 {
        let n = args.election_servers;
        let mut cluster = start(&work.join("elections"), &exe, n, args)?;
        let trials = args.election_trials;
        let result = election::run(&mut cluster, n, trials, &mut |t, trial| {
            if t % 10 == 0 || t == trials {
                eprintln!(
                    "elections: {t}/{trials} (last: {:.0} ms, {} term{})",
                    trial.downtime_ms,
                    trial.terms,
                    if trial.terms == 1 { "" } else { "s" }
                );
            }
        })?;
        report.elections = Some(result);
    }
    Ok(())
}

/// The matrix's client side against a running cluster: its size is fixed and its nodes
/// are not ours to kill, so only the write cells run.
fn run_remote(args: &BenchArgs, path: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(path)?;
    anyhow::ensure!(
        !cluster.clients.is_empty(),
        "{}: no node has a `client` address to send requests to",
        path.display()
    );
    let servers = cluster.node_ids().len() as u32;
    let connect = || -> anyhow::Result<Client> {
        let mut cfg = ClientConfig::for_cluster(&cluster);
        cfg.max_total = CLIENT_PATIENCE;
        Ok(Client::new(cfg)?)
    };
    if args.election_trials > 0 {
        eprintln!("bench: election trials need a local cluster (they kill nodes); skipped");
    }
    let total = args.entries.len() * args.sizes.len() * args.clients.len();
    let mut i = 0;
    for &entries in &args.entries {
        for &size in &args.sizes {
            for &clients in &args.clients {
                i += 1;
                let cell = workload::run(servers, clients, entries, size, args.pipeline, &connect)?;
                eprintln!(
                    "[{i:>2}/{total}] {clients:>3} clients, {entries:>5} × {size:>4} B: {:>7.0} req/s",
                    cell.requests_per_s
                );
                report.cells.push(cell);
            }
        }
    }
    Ok(())
}

/// A local cluster of `n` nodes as `args` configure them, all started, with a leader.
fn start(
    dir: &std::path::Path,
    exe: &std::path::Path,
    n: u32,
    args: &BenchArgs,
) -> anyhow::Result<LocalCluster> {
    let mut cluster = LocalCluster::create(dir, exe, n, n, args.fabric)?;
    if let Some(every) = args.snapshot_entries {
        cluster.set_raft("snapshot_entries", &every.to_string())?;
    }
    for id in 1..=n {
        cluster.start(id)?;
    }
    cluster
        .leader(Duration::from_secs(15))
        .with_context(|| format!("no leader within 15 s; node logs are in {}", dir.display()))?;
    Ok(cluster)
}
