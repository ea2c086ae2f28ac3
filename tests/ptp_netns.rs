//! Three hosts in network namespaces this test creates (veth pairs to a bridge in a fourth
//! namespace, `tc netem` delay and jitter on every link), each running a `weft node` on the
//! `ptp` fabric with weft's own IEEE 1588 synchronization (`clock = "software"`) and a
//! software clock started seconds away from the others. The clocks must converge to a
//! measured offset below ε, a leader must be elected and writes must commit.
//!
//! Needs root (network namespaces) and `ip`/`tc` from iproute2; anywhere else it says so
//! and passes without running. Everything it creates is removed when it ends, and it is
//! bounded to about a minute.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EPSILON_US: u64 = 1_000;

/// Runs `cmd args` and says whether it succeeded.
fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The namespaces and processes of one test, removed on drop.
struct Hosts {
    prefix: String,
    nodes: Vec<Child>,
}

impl Hosts {
    fn ns(&self, i: u32) -> String {
        format!("{}{i}", self.prefix)
    }

    fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Creates the namespaces and links, or `None` (with the reason printed) where this
    /// machine cannot.
    fn create(n: u32) -> Option<Hosts> {
        let uid = Command::new("id").arg("-u").output().ok();
        if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
            eprintln!("skipped: creating network namespaces needs root");
            return None;
        }
        let hosts = Hosts {
            prefix: format!("wft{}-", std::process::id()),
            nodes: Vec::new(),
        };
        let br = hosts.bridge_ns();
        if !run("ip", &["netns", "add", &br]) {
            eprintln!("skipped: `ip netns add` failed (no iproute2 or no namespace support)");
            return None;
        }
        let ok = run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])
            && run("ip", &["-n", &br, "link", "set", "br0", "up"])
            && (1..=n).all(|i| {
                let ns = hosts.ns(i);
                let (inside, outside) = (format!("veth{i}"), format!("port{i}"));
                run("ip", &["netns", "add", &ns])
                    && run(
                        "ip",
                        &[
                            "-n", &ns, "link", "add", &inside, "type", "veth", "peer", "name",
                            &outside, "netns", &br,
                        ],
                    )
                    && run("ip", &["-n", &br, "link", "set", &outside, "master", "br0"])
                    && run("ip", &["-n", &br, "link", "set", &outside, "up"])
                    && run(
                        "ip",
                        &[
                            "-n",
                            &ns,
                            "addr",
                            "add",
                            &format!("10.77.0.{i}/24"),
                            "dev",
                            &inside,
                        ],
                    )
                    && run("ip", &["-n", &ns, "link", "set", &inside, "up"])
                    && run("ip", &["-n", &ns, "link", "set", "lo", "up"])
            });
        if !ok {
            eprintln!("skipped: could not build the namespaces' links (veth, bridge)");
            return None;
        }
        // 200 µs ± 50 µs each way: a LAN with some queueing. Kernels without the netem
        // qdisc (sch_netem) keep the bare veth links, and the test says so.
        let delayed = (1..=n).all(|i| {
            let (ns, dev) = (hosts.ns(i), format!("veth{i}"));
            run(
                "tc",
                &[
                    "-n", &ns, "qdisc", "add", "dev", &dev, "root", "netem", "delay", "200us",
                    "50us",
                ],
            )
        });
        if !delayed {
            eprintln!("note: tc netem is not available here; the links carry no added delay");
        }
        Some(hosts)
    }

    /// Starts `weft node` for member `id` inside its namespace, its software clock shifted
    /// by `offset_ns`.
    fn start(&mut self, exe: &Path, config: &Path, id: u32, offset_ns: i64, log: &Path) {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(id)])
            .arg(exe)
            .args(["node", "--config"])
            .arg(config)
            .args(["--id", &id.to_string()])
            .env("WEFT_PTP_CLOCK_OFFSET_NS", offset_ns.to_string())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes.push(child);
    }

    /// Runs `weft ARGS` inside member 1's namespace; its stdout if it succeeded.
    fn weft(&self, exe: &Path, args: &[&str]) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(1)])
            .arg(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 1..=3 {
            run("ip", &["netns", "del", &self.ns(i)]);
        }
        run("ip", &["netns", "del", &self.bridge_ns()]);
    }
}

/// The offsets (µs) `weft status` reports, and whether every node claims total order.
fn offsets(status: &str) -> (Vec<f64>, bool) {
    let lines: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("clocks at node"))
        .collect();
    let all_ordered = !lines.is_empty() && lines.iter().all(|l| l.contains("total_order on"));
    let values = lines
        .iter()
        .flat_map(|l| l.split(": ").skip(2))
        .filter_map(|part| part.split(' ').next()?.parse::<f64>().ok())
        .collect();
    (values, all_ordered)
}

#[test]
fn three_hosts_synchronize_with_weft_ptp_and_run_raft() {
    let Some(mut hosts) = Hosts::create(3) else {
        return;
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nid = 77\nnodes = [\n\
             {{ id = 1, addr = \"10.77.0.1:7000\", client = \"10.77.0.1:7100\" }},\n\
             {{ id = 2, addr = \"10.77.0.2:7000\", client = \"10.77.0.2:7100\" }},\n\
             {{ id = 3, addr = \"10.77.0.3:7000\", client = \"10.77.0.3:7100\" }},\n]\n\
             [transport]\nkind = \"ptp\"\nrequire = [\"reliable\", \"fifo_per_peer\"]\n\
             [transport.ptp]\nclock = \"software\"\nepsilon_us = {EPSILON_US}\n\
             delta_min_us = 2000\ndelta_max_us = 20000\n"
        ),
    )
    .unwrap();
    // Software clocks 0 s, +2 s and −3 s away from each other at start.
    for (id, offset_ns) in [(1, 0i64), (2, 2_000_000_000), (3, -3_000_000_000)] {
        hosts.start(
            &exe,
            &config,
            id,
            offset_ns,
            &dir.path().join(format!("node-{id}.log")),
        );
    }
    let cfg = config.to_str().unwrap();
    let started = Instant::now();
    let (worst, status) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no synchronization within a minute; last status:\n{}\nnode 2 log:\n{}",
            hosts
                .weft(&exe, &["status", "--config", cfg])
                .unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("node-2.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
        let Some(status) = hosts.weft(&exe, &["status", "--config", cfg]) else {
            continue;
        };
        let (values, ordered) = offsets(&status);
        let worst = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // Every node measured both peers, within ε, and claims total order again.
        if values.len() == 6 && ordered && worst < EPSILON_US as f64 && status.contains("Leader") {
            break (worst, status);
        }
    };
    let synchronized = started.elapsed();
    // Then they stay together: five more readings over two and a half seconds, most of
    // them within ε (a busy machine can delay a user-space timestamp by milliseconds).
    let mut readings: Vec<f64> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(500));
            let status = hosts
                .weft(&exe, &["status", "--config", cfg])
                .unwrap_or_default();
            let (values, _) = offsets(&status);
            values.iter().fold(0.0f64, |m, v| m.max(v.abs()))
        })
        .collect();
    readings.sort_by(f64::total_cmp);
    let steady = readings[2];
    assert!(
        steady < EPSILON_US as f64,
        "median worst offset {steady} µs: {readings:?}"
    );
    eprintln!(
        "synchronized in {synchronized:?} (worst offset then {worst:.1} µs); the next \
         readings' worst offsets, sorted: {readings:?} µs:\n{status}"
    );
    // The clocks really started apart: each node first measured offsets beyond ε and
    // withdrew total order, then restored it once synchronized.
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{id}.log"))).unwrap();
        assert!(
            log.contains("withdrawing total_order") && log.contains("total_order restored"),
            "node {id}:\n{log}"
        );
    }
    // Raft works over it: a write commits and reads back.
    assert!(hosts
        .weft(&exe, &["kv", "--config", cfg, "put", "k", "v"])
        .is_some());
    let got = hosts
        .weft(&exe, &["kv", "--config", cfg, "get", "k"])
        .unwrap();
    assert!(got.contains('v'), "{got}");
}
