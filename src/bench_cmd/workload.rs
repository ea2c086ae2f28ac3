//! One cell of the write matrix: `entries` puts of `size` bytes spread over `clients`
//! concurrent clients (one thread and one persistent connection each), measured the way
//! rafty reported them — each client's duration (mean and standard deviation over the
//! clients), requests per second for the whole run, mean time per request — plus the
//! latency distribution.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use serde::Serialize;
use weft_raft::client::{Client, Connection};
use weft_raft::service::protocol::{ClientRequest, Reply, Request};

use crate::latency::{Recorder, Summary};

/// What one cell measured.
#[derive(Clone, Debug, Serialize)]
pub struct CellResult {
    /// Cluster size.
    pub servers: u32,
    /// Concurrent clients.
    pub clients: u32,
    /// Puts each client kept in flight.
    pub pipeline: u32,
    /// Puts in the run.
    pub entries: u64,
    /// Bytes per value.
    pub size: usize,
    /// Wall time from the first request to the last answer, in seconds.
    pub duration_s: f64,
    /// Mean of the clients' own durations, in seconds (rafty's "average duration").
    pub client_mean_s: f64,
    /// Standard deviation of the clients' durations, in seconds.
    pub client_std_s: f64,
    /// Acknowledged puts per second of wall time.
    pub requests_per_s: f64,
    /// Mean latency of a put, in milliseconds (rafty's "average time per request").
    pub mean_request_ms: f64,
    /// Latency distribution of the acknowledged puts.
    pub latency: Summary,
    /// (microseconds, quantile) points of the latency CDF.
    pub cdf: Vec<(f64, f64)>,
    /// Puts that failed after the client's retries.
    pub errors: u64,
    /// Why the first of them failed.
    pub first_error: Option<String>,
    /// Bytes on the leader's disk after the run (log, hard state, snapshots), when the
    /// cluster is local.
    pub leader_disk_bytes: Option<u64>,
}

/// A progress bar on a terminal while the clients work (nothing in logs: each cell
/// prints its own line when it ends).
fn show_progress<T>(done: &AtomicU64, entries: u64, workers: &[std::thread::JoinHandle<T>]) {
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    while workers.iter().any(|w| !w.is_finished()) {
        let n = done.load(Ordering::Relaxed).min(entries);
        let filled = (n * 30 / entries) as usize;
        let _ = write!(
            err,
            "\r  [{}{}] {:>3} % ({n}/{entries} puts)",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            n * 100 / entries
        );
        let _ = err.flush();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = write!(err, "\r{}\r", " ".repeat(60));
}

/// Failed puts: how many, and why the first one failed.
#[derive(Default)]
struct Failed {
    count: u64,
    first: Option<String>,
}

impl Failed {
    fn add(&mut self, why: impl std::fmt::Display) {
        self.count += 1;
        self.first.get_or_insert_with(|| why.to_string());
    }

    fn merge(&mut self, other: Failed) {
        self.count += other.count;
        self.first = self.first.take().or(other.first);
    }
}

/// What one client thread measured: its duration, its latencies, its failed puts.
type ClientRun = (Duration, Recorder, Failed);

/// One client's share of a cell: `n` puts of `value` under `key(k)`, started together at
/// `start_line`, each counted in `done` for the progress bar.
struct Share<'a> {
    n: u64,
    key: &'a dyn Fn(u64) -> String,
    value: &'a Bytes,
    start_line: &'a Barrier,
    done: &'a AtomicU64,
}

/// One put at a time, each retried by the client library until answered.
fn closed_loop(mut client: Client, share: Share<'_>) -> anyhow::Result<ClientRun> {
    // Every thread reaches the start line, ready or not, so that a failure cannot leave
    // the others waiting there.
    let rec = Recorder::new();
    share.start_line.wait();
    let (mut rec, mut failed) = (rec?, Failed::default());
    let began = Instant::now();
    for k in 0..share.n {
        let t = Instant::now();
        match client.put(&(share.key)(k), share.value.clone()) {
            Ok(_) => rec.record(t.elapsed()),
            Err(e) => failed.add(e),
        }
        share.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok((began.elapsed(), rec, failed))
}

/// `depth` puts in flight on one connection to the leader the client found, a new one
/// sent as each answer arrives; all in the client's session, in sequence. Without the
/// library's retries a redirect or error answer counts as a failed put, and the run ends
/// if an answer takes longer than the client's patience.
fn pipelined(mut client: Client, depth: u32, share: Share<'_>) -> anyhow::Result<ClientRun> {
    // A write finds the leader (a read may be answered by a follower).
    let found = client.put("bench-warm-up", share.value.clone());
    let cfg = client.config();
    let conn = Connection::open(client.target(), cfg, cfg.request_timeout);
    let rec = Recorder::new();
    let patience = cfg.max_total;
    let (session, mut seq) = (client.client_id(), client.last_seq());
    let mut failed = Failed::default();
    let mut sent_at = HashMap::new();
    let mut put =
        |conn: &mut Connection, sent_at: &mut HashMap<_, _>, k: u64| -> anyhow::Result<()> {
            seq += 1;
            let id = conn.next_id();
            let body = Request::Put {
                client: session,
                seq,
                key: (share.key)(k),
                value: share.value.clone(),
            };
            sent_at.insert(id, Instant::now());
            conn.send(&ClientRequest { id, body })?;
            Ok(())
        };
    share.start_line.wait();
    found?;
    let (mut conn, mut rec) = (conn?, rec?);
    let began = Instant::now();
    let mut next = 0;
    while next < share.n.min(u64::from(depth)) {
        put(&mut conn, &mut sent_at, next)?;
        next += 1;
    }
    let mut answered = 0;
    while answered < share.n {
        let reply = conn.recv(Some(patience))?;
        let Some(t) = sent_at.remove(&reply.id) else {
            continue; // not one of ours
        };
        match reply.body {
            Reply::Written { .. } => rec.record(t.elapsed()),
            other => failed.add(format!("{other:?}")),
        }
        answered += 1;
        share.done.fetch_add(1, Ordering::Relaxed);
        if next < share.n {
            put(&mut conn, &mut sent_at, next)?;
            next += 1;
        }
    }
    Ok((began.elapsed(), rec, failed))
}

/// Mean and (population) standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The share of `entries` client `i` of `clients` writes (the first ones take the rest).
fn share(entries: u64, clients: u32, i: u32) -> u64 {
    let (base, rest) = (entries / u64::from(clients), entries % u64::from(clients));
    base + u64::from(u64::from(i) < rest)
}

/// Runs the puts with one client per thread, made by `connect`, each connected to the
/// leader before the clock starts; keys are unique per client and request, so every put
/// appends a new entry to the log. Each client keeps `pipeline` puts in flight on its
/// connection (1: rafty's closed loop, one request, then its answer).
pub fn run(
    servers: u32,
    clients: u32,
    entries: u64,
    size: usize,
    pipeline: u32,
    connect: &dyn Fn() -> anyhow::Result<Client>,
) -> anyhow::Result<CellResult> {
    anyhow::ensure!(
        clients > 0 && entries > 0 && pipeline > 0,
        "a run needs clients, entries and at least one put in flight"
    );
    let start_line = Arc::new(Barrier::new(clients as usize + 1));
    let done = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'w'; size]);
    let workers = (0..clients)
        .map(|i| {
            let mut client = connect()?;
            let (start_line, value, done) = (start_line.clone(), value.clone(), done.clone());
            let n = share(entries, clients, i);
            std::thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .spawn(move || {
                    // Connect to the leader before the clock starts: the runs measure
                    // steady writes, not a storm of connection set-ups. A write, since a
                    // follower answers reads itself and would keep the client.
                    let _ = client.put("bench-warm-up", value.clone());
                    let key = |k: u64| format!("bench-{i}-{k}");
                    let share = Share {
                        n,
                        key: &key,
                        value: &value,
                        start_line: &start_line,
                        done: &done,
                    };
                    if pipeline == 1 {
                        closed_loop(client, share)
                    } else {
                        pipelined(client, pipeline, share)
                    }
                })
                .context("starting a client thread")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    start_line.wait();
    let began = Instant::now();
    show_progress(&done, entries, &workers);
    let mut all = Recorder::new()?;
    let (mut durations, mut failed) = (Vec::new(), Failed::default());
    for w in workers {
        let (d, rec, e): ClientRun = w
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
        durations.push(d.as_secs_f64());
        all.merge(&rec);
        failed.merge(e);
    }
    let duration_s = began.elapsed().as_secs_f64();
    let latency = all.summary().ok_or_else(|| {
        anyhow!(
            "no put was acknowledged ({} failed; the first: {})",
            failed.count,
            failed.first.as_deref().unwrap_or("-")
        )
    })?;
    let (client_mean_s, client_std_s) = mean_std(&durations);
    Ok(CellResult {
        servers,
        clients,
        entries,
        size,
        duration_s,
        client_mean_s,
        client_std_s,
        pipeline,
        requests_per_s: latency.count as f64 / duration_s,
        mean_request_ms: latency.mean_ns / 1e6,
        latency,
        cdf: all.cdf(50),
        errors: failed.count,
        first_error: failed.first,
        leader_disk_bytes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (entries, clients) in [(1000, 64), (10, 3), (5, 256), (256, 256)] {
            let shares: Vec<u64> = (0..clients).map(|i| share(entries, clients, i)).collect();
            assert_eq!(shares.iter().sum::<u64>(), entries);
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{entries}/{clients}: {shares:?}");
        }
    }

    #[test]
    fn mean_and_standard_deviation() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!((m, s), (5.0, 2.0));
        assert_eq!(mean_std(&[]), (0.0, 0.0));
    }
}
