//! The benchmark's outputs: a JSON file of every number, a self-contained HTML report with
//! tables and plots, and the summary table printed at the end.

use std::fmt::Write;
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::baseline::Baseline;
use super::election::ElectionResult;
use super::svg::{histogram, LineChart, Scale};
use super::workload::CellResult;

/// Where and on what the benchmark ran, so figures are never quoted without it.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model from `/proc/cpuinfo`.
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads this machine's description (unknown parts stay empty).
    pub fn probe() -> Machine {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let mem_kib: f64 = field(&read("/proc/meminfo"), "MemTotal")
            .trim_end_matches(" kB")
            .parse()
            .unwrap_or(0.0);
        Machine {
            cpu: field(&read("/proc/cpuinfo"), "model name"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (mem_kib / 1048576.0 * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        }
    }
}

/// Everything one `weft bench` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The fabric (or the config file of a running cluster).
    pub transport: String,
    /// The machine.
    pub machine: Machine,
    /// The build profile of the `weft` binary (`release` or `debug`).
    pub build: &'static str,
    /// The `snapshot_entries` the local clusters ran with, if not the default.
    pub snapshot_entries: Option<u64>,
    /// The floor measured before the matrix: loopback round trip and one fdatasync.
    pub baseline: Option<Baseline>,
    /// The write matrix, one entry per cell.
    pub cells: Vec<CellResult>,
    /// The election trials, if run.
    pub elections: Option<ElectionResult>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Report {
    /// The summary table (also the HTML report's first table), one line per cell.
    pub fn table(&self) -> String {
        // A pipelined run shows its clients as `clients×in flight`.
        let mut t = String::from(
            "servers clients entries  size  duration(s)  client mean±std (s)   req/s  of ceiling   ms/req   p50 ms   p99 ms  p99.9 ms  p50/floor  p50/shared  leader disk\n",
        );
        let floor = self.baseline.as_ref().map(Baseline::floor_ns);
        let ratio = |p50: u64, f: Option<u64>| {
            f.map_or("-".into(), |f| {
                format!("{:.2} ×", p50 as f64 / f.max(1) as f64)
            })
        };
        for c in &self.cells {
            let disk = c.leader_disk_bytes.map_or("-".into(), |b| match b {
                0..1_048_576 => format!("{:.0} KiB", b as f64 / 1024.0),
                _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
            });
            let _ = writeln!(
                t,
                "{:>7} {:>7} {:>7} {:>5} {:>12.3} {:>10.3} ± {:<8.3} {:>7.0} {:>11} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>10} {:>11}  {disk}{}",
                c.servers,
                match c.pipeline {
                    1 => c.clients.to_string(),
                    d => format!("{}×{d}", c.clients),
                },
                c.entries,
                c.size,
                c.duration_s,
                c.client_mean_s,
                c.client_std_s,
                c.requests_per_s,
                self.baseline
                    .as_ref()
                    .and_then(|b| b.ceiling(c.clients))
                    .map_or("-".into(), |ceil| format!(
                        "{:.1} %",
                        100.0 * c.requests_per_s / ceil.max(f64::MIN_POSITIVE)
                    )),
                c.mean_request_ms,
                ms(c.latency.p50_ns),
                ms(c.latency.p99_ns),
                ms(c.latency.p999_ns),
                ratio(c.latency.p50_ns, floor),
                ratio(
                    c.latency.p50_ns,
                    self.baseline
                        .as_ref()
                        .and_then(|b| b.shared_floor_ns(c.servers))
                ),
                match &c.first_error {
                    Some(why) if c.errors > 0 => format!("  ({} failed; the first: {why})", c.errors),
                    _ => String::new(),
                },
            );
        }
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                t,
                "\nfloor (measured before the matrix): loopback TCP round trip p50 {:.3} ms + fdatasync p50 {:.3} ms = {:.3} ms (each fdatasync takes {:.1} µs of CPU)",
                ms(b.tcp_round_trip.p50_ns),
                ms(b.fdatasync.p50_ns),
                ms(b.floor_ns()),
                b.fdatasync_cpu_ns as f64 / 1e3
            );
            if !b.shared_fdatasync.is_empty() {
                let _ = writeln!(
                    t,
                    "shared floor (one file per node synced at once, as a local cluster's nodes share this disk): fdatasync {}",
                    b.shared_line()
                );
                for s in &b.shared_fdatasync {
                    if let Some(least) = b.replicated_floor_ns(s.writers) {
                        let _ = writeln!(
                            t,
                            "least replicated write on {} nodes here (client round trip + leader-follower round trip + {} syncs at once): {:.3} ms = {:.2} × floor",
                            s.writers,
                            s.writers,
                            ms(least),
                            least as f64 / b.floor_ns().max(1) as f64
                        );
                    }
                }
            }
            let _ = writeln!(
                t,
                "ceiling (the same clients against a loopback TCP echo server): {}",
                b.ceiling_line()
            );
        }
        if let Some(e) = &self.elections {
            let d = &e.downtime;
            let _ = writeln!(
                t,
                "\nelections ({} nodes, {} trials): downtime p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; terms used {}",
                e.servers,
                e.trials.len(),
                ms(d.p50_ns),
                ms(d.p90_ns),
                ms(d.p99_ns),
                ms(d.max_ns),
                e.terms_histogram
                    .iter()
                    .enumerate()
                    .map(|(i, n)| format!("{}: {n}", i + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        t
    }

    /// Latency CDFs of the largest runs of the smallest entry size, one line per cluster
    /// size and client count.
    fn cdf_chart(&self) -> String {
        let size = self.cells.iter().map(|c| c.size).min().unwrap_or(0);
        let entries = self.cells.iter().map(|c| c.entries).max().unwrap_or(0);
        LineChart {
            title: &format!("Put latency CDF ({entries} entries of {size} B)"),
            x_label: "latency (µs, log scale)",
            y_label: "fraction of puts",
            x_scale: Scale::Log,
            series: self
                .cells
                .iter()
                .filter(|c| c.size == size && c.entries == entries)
                .map(|c| {
                    let pts = c.cdf.iter().map(|(us, q)| (*us, *q)).collect();
                    (format!("{} servers, {} clients", c.servers, c.clients), pts)
                })
                .collect(),
        }
        .render()
    }

    /// Requests per second against clients, one line per cluster size and entry size
    /// (largest entry count).
    fn throughput_chart(&self) -> String {
        let entries = self.cells.iter().map(|c| c.entries).max().unwrap_or(0);
        let mut keys: Vec<(u32, usize)> = self.cells.iter().map(|c| (c.servers, c.size)).collect();
        keys.sort();
        keys.dedup();
        LineChart {
            title: &format!("Throughput against clients ({entries} entries)"),
            x_label: "concurrent clients (log scale)",
            y_label: "acknowledged puts / s",
            x_scale: Scale::Log,
            series: keys
                .into_iter()
                .map(|(servers, size)| {
                    let mut pts: Vec<(f64, f64)> = self
                        .cells
                        .iter()
                        .filter(|c| c.servers == servers && c.size == size && c.entries == entries)
                        .map(|c| (f64::from(c.clients), c.requests_per_s))
                        .collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (format!("{servers} servers, {size} B"), pts)
                })
                .collect(),
        }
        .render()
    }

    /// The HTML report: machine, summary table, plots.
    pub fn html(&self) -> String {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
        let m = &self.machine;
        let mut h = format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>weft bench</title>\
             <style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}\
             pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style></head><body>\
             <h1>weft bench</h1><p>Transport: <b>{}</b>; build: {}; snapshots every {} \
             entries; machine: {} ({} CPUs, {} GiB, Linux {}).</p><h2>Writes</h2><pre>{}</pre>",
            esc(&self.transport),
            self.build,
            self.snapshot_entries
                .map_or("(default)".to_string(), |n| n.to_string()),
            esc(&m.cpu),
            m.cpus,
            m.memory_gib,
            esc(&m.kernel),
            esc(&self.table())
        );
        if !self.cells.is_empty() {
            h.push_str(&self.cdf_chart());
            h.push_str(&self.throughput_chart());
        }
        if let Some(e) = &self.elections {
            let ms: Vec<f64> = e.trials.iter().map(|t| t.downtime_ms).collect();
            let _ = write!(
                h,
                "<h2>Elections</h2><p>{} trials on {} nodes: the leader is killed with SIGKILL; \
                 downtime runs from the kill to the first status report of a new leader.</p>{}",
                e.trials.len(),
                e.servers,
                histogram(
                    "Time to a new leader after a leader crash",
                    "downtime (ms)",
                    &ms,
                    10.0
                )
            );
        }
        h.push_str("</body></html>\n");
        h
    }

    /// Writes `report.json` and `report.html` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        fs::write(dir.join("report.html"), self.html())?;
        Ok(())
    }
}
