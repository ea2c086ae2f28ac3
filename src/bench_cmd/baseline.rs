//! What a durable write cannot beat, measured in the same run as the matrix (these
//! machines are shared and noisy, so a figure is only quoted against a baseline taken
//! beside it): a loopback TCP round trip, as a client's request and answer make, and one
//! `fdatasync` of a small append in the directory the nodes write to, into reserved space
//! as the log appends; the same with as many files synced at once as a local cluster has
//! nodes (they share one disk here, which no real deployment does); and, for each client
//! count of the matrix, the request rate that many clients (with as many requests in flight
//! each as the matrix's clients keep) reach against a server that does nothing but answer
//! (the ceiling a replicated write cannot pass on this machine, since every put pays the
//! same socket calls and wake-ups before any Raft work). That server is measured twice:
//! a thread per connection (the machine's ceiling) and a tokio runtime with as many
//! workers as the client service has (what the service's own socket handling leaves).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use weft_raft::service::DEFAULT_WORKERS;

use crate::latency::{Recorder, Summary};

/// Round trips and syncs measured (after a tenth as many unmeasured ones).
const SAMPLES: usize = 2000;
const SYNCS: usize = 300;
/// The size of one request on the wire, and of one appended log record.
const MESSAGE: usize = 128;

/// How long each ceiling measurement runs.
const CEILING_RUN: Duration = Duration::from_millis(1500);

/// The floor a write's latency is compared against, and the ceiling its rate is.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// Loopback TCP round trips of a `MESSAGE`-byte request and its echo.
    pub tcp_round_trip: Summary,
    /// `fdatasync` after appending `MESSAGE` bytes to a file beside the nodes' data, into
    /// space reserved ahead as the log's segments do.
    pub fdatasync: Summary,
    /// The mean CPU time the syncing thread spends on each of those `fdatasync` calls, in
    /// nanoseconds (the wait for the disk not included; nor the kernel's I/O completion
    /// work elsewhere): every node pays it for each batch it makes durable, which bounds
    /// the writes per second a machine's cores can sync.
    pub fdatasync_cpu_ns: u64,
    /// The same, with one file per node synced at once, by server count of the matrix.
    pub shared_fdatasync: Vec<SharedSync>,
    /// Echoes per second that many closed-loop clients reach, by client count.
    pub echo_ceiling: Vec<Ceiling>,
}

/// `fdatasync` latency while `writers` threads each append to and sync their own file in
/// the same directory, as the nodes of a local cluster do on one disk.
#[derive(Clone, Debug, Serialize)]
pub struct SharedSync {
    /// Files synced at once.
    pub writers: u32,
    /// Every sync of every writer.
    pub fdatasync: Summary,
}

/// The request rate of `clients` clients, one connection and `in_flight` `MESSAGE`-byte
/// requests in flight each (a new one sent as each echo returns), against an echo server.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    /// Concurrent clients.
    pub clients: u32,
    /// Requests each client kept in flight.
    pub in_flight: u32,
    /// Round trips completed per second, all clients together, against a
    /// thread-per-connection server.
    pub requests_per_s: f64,
    /// The same against a tokio server with the client service's default worker count.
    pub tokio_requests_per_s: f64,
}

/// How the echo server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EchoServer {
    /// A blocking thread per connection.
    Threads,
    /// A task per connection on a multi-threaded tokio runtime with this many workers.
    Tokio(usize),
}

impl Baseline {
    /// Loopback round trip plus one fdatasync, medians, in nanoseconds: the latency floor.
    pub fn floor_ns(&self) -> u64 {
        self.tcp_round_trip.p50_ns + self.fdatasync.p50_ns
    }

    /// Loopback round trip plus one fdatasync with `servers` files syncing at once,
    /// medians, in nanoseconds, if that was measured: the floor of a local cluster whose
    /// nodes share one disk.
    pub fn shared_floor_ns(&self, servers: u32) -> Option<u64> {
        self.shared_fdatasync
            .iter()
            .find(|s| s.writers == servers)
            .map(|s| self.tcp_round_trip.p50_ns + s.fdatasync.p50_ns)
    }

    /// The least a replicated write can take on a local cluster of `servers` nodes, medians,
    /// in nanoseconds, if the shared sync was measured: the client's round trip to the
    /// leader, the leader's round trip to a follower, and the nodes' syncs at once on the
    /// disk they share. Where it exceeds 1.5 × [`Baseline::floor_ns`] (the service's
    /// latency target), no implementation can meet that target on this machine.
    pub fn replicated_floor_ns(&self, servers: u32) -> Option<u64> {
        self.shared_floor_ns(servers)
            .map(|shared| shared + self.tcp_round_trip.p50_ns)
    }

    /// The shared syncs as `N at once p50 X ms` items, for the logs and the summary.
    pub fn shared_line(&self) -> String {
        self.shared_fdatasync
            .iter()
            .map(|s| {
                format!(
                    "{} at once p50 {:.3} ms",
                    s.writers,
                    s.fdatasync.p50_ns as f64 / 1e6
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The echo ceiling measured for `clients`, if it was.
    pub fn ceiling(&self, clients: u32) -> Option<f64> {
        self.echo_ceiling
            .iter()
            .find(|c| c.clients == clients)
            .map(|c| c.requests_per_s)
    }

    /// The ceilings as `N clients R req/s` items, for the logs and the summary.
    pub fn ceiling_line(&self) -> String {
        self.echo_ceiling
            .iter()
            .map(|c| {
                format!(
                    "{} clients{} {:.0} req/s (tokio: {:.0})",
                    c.clients,
                    in_flight(c.in_flight),
                    c.requests_per_s,
                    c.tokio_requests_per_s
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Measures the floor in `dir` (created if missing), the shared sync for each of
    /// `servers` and the ceiling for each of `clients` with `in_flight` requests each.
    pub fn measure(
        dir: &Path,
        servers: &[u32],
        clients: &[u32],
        in_flight: u32,
    ) -> anyhow::Result<Baseline> {
        let distinct = |v: &[u32]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        };
        let counts = distinct(clients);
        let (one_sync, fdatasync_cpu_ns) = fdatasync(dir, 1)?;
        Ok(Baseline {
            tcp_round_trip: tcp_round_trip()?,
            fdatasync: one_sync,
            fdatasync_cpu_ns,
            shared_fdatasync: distinct(servers)
                .into_iter()
                .filter(|&n| n > 1)
                .map(|writers| {
                    Ok(SharedSync {
                        writers,
                        fdatasync: fdatasync(dir, writers)?.0,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            echo_ceiling: counts
                .into_iter()
                .map(|c| {
                    let rate = |server| echo_ceiling(c, in_flight, CEILING_RUN, server);
                    let tokio = EchoServer::Tokio(DEFAULT_WORKERS);
                    Ok(Ceiling {
                        clients: c,
                        in_flight,
                        requests_per_s: rate(EchoServer::Threads)?,
                        tokio_requests_per_s: rate(tokio)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

/// How a client count's depth reads after it: nothing for one request at a time,
/// ` × d in flight` for pipelined clients.
pub fn in_flight(depth: u32) -> String {
    match depth {
        1 => String::new(),
        d => format!(" × {d} in flight"),
    }
}

/// Sends back whatever arrives on `s`, as it arrives, until the client hangs up: one
/// read and one write for however many requests are waiting.
fn echo(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(()), // the client is done
            Ok(k) => s.write_all(&buf[..k])?,
        }
    }
}

fn tcp_round_trip() -> anyhow::Result<Summary> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || echo(listener.accept()?.0));
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut rec = Recorder::new()?;
    let mut buf = [7u8; MESSAGE];
    for i in 0..SAMPLES + SAMPLES / 10 {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        if i >= SAMPLES / 10 {
            rec.record(t.elapsed());
        }
    }
    drop(s);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    rec.summary().context("no round trip recorded")
}

/// Round trips per second of `clients` closed-loop clients with `in_flight` requests
/// each, against `server`.
fn echo_ceiling(
    clients: u32,
    in_flight: u32,
    run: Duration,
    server: EchoServer,
) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = match server {
        EchoServer::Threads => std::thread::spawn(move || serve_threads(&listener, clients)),
        EchoServer::Tokio(workers) => {
            std::thread::spawn(move || serve_tokio(listener, clients, workers))
        }
    };
    let start_line = Arc::new(Barrier::new(clients as usize + 1));
    let workers = (0..clients)
        .map(|_| {
            let mut s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            let mut replies = std::io::BufReader::new(s.try_clone()?);
            let start_line = Arc::clone(&start_line);
            Ok(std::thread::spawn(move || -> std::io::Result<u64> {
                let mut buf = [7u8; MESSAGE];
                start_line.wait();
                let began = Instant::now();
                for _ in 0..in_flight {
                    s.write_all(&buf)?;
                }
                let (mut done, mut sent) = (0, u64::from(in_flight));
                while done < sent {
                    replies.read_exact(&mut buf)?;
                    done += 1;
                    if began.elapsed() < run {
                        s.write_all(&buf)?;
                        sent += 1;
                    }
                }
                Ok(done)
            }))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    start_line.wait();
    let began = Instant::now();
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| anyhow::anyhow!("an echo client panicked"))??;
    }
    let elapsed = began.elapsed().as_secs_f64();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the echo server panicked"))??;
    Ok(total as f64 / elapsed)
}

/// Echoes `clients` connections, a thread each, until every one hangs up.
fn serve_threads(listener: &TcpListener, clients: u32) -> std::io::Result<()> {
    let conns = (0..clients)
        .map(|_| {
            let s = listener.accept()?.0;
            Ok(std::thread::spawn(move || echo(s)))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for c in conns {
        // A connection that failed only lowers the rate the clients see.
        let _ = c.join();
    }
    Ok(())
}

/// Echoes `clients` connections, a task each on a tokio runtime with `workers` worker
/// threads, until every one hangs up.
fn serve_tokio(listener: TcpListener, clients: u32, workers: usize) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut conns = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let mut s = listener.accept().await?.0;
            s.set_nodelay(true)?;
            conns.spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return, // the client is done
                        Ok(k) => {
                            if s.write_all(&buf[..k]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        while conns.join_next().await.is_some() {}
        Ok(())
    })
}

/// `SYNCS` measured syncs of each of `writers` threads, each appending `MESSAGE` bytes
/// at a time to its own file in `dir`, into space reserved beforehand (as the log does;
/// where the file system cannot reserve, plain appends).
/// Returns the syncs' latencies and their mean CPU time on the syncing threads.
fn fdatasync(dir: &Path, writers: u32) -> anyhow::Result<(Summary, u64)> {
    std::fs::create_dir_all(dir)?;
    let total = SYNCS + SYNCS / 10;
    // Every file is ready before any thread starts: a failure here leaves none waiting
    // at the barrier.
    let mut files = Vec::new();
    for w in 0..writers {
        let path = dir.join(format!("fdatasync-baseline-{w}"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let _ = weft_raft::storage::preallocate(&f, 0, (total * MESSAGE) as u64);
        f.sync_all()?;
        files.push((path, f));
    }
    let start = Arc::new(Barrier::new(files.len()));
    let threads: Vec<_> = files
        .into_iter()
        .map(|(path, f)| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let record = [0x5au8; MESSAGE];
                let (mut took, mut cpu) = (Vec::with_capacity(SYNCS), Duration::ZERO);
                start.wait();
                let result = (0..total).try_for_each(|i| {
                    f.write_all_at(&record, (i * MESSAGE) as u64)?;
                    // The CPU clock is read outside the timed window: reading it is a
                    // system call, which the sync's latency must not include.
                    let c = thread_cpu();
                    let t = Instant::now();
                    f.sync_data()?;
                    let latency = t.elapsed();
                    if i >= SYNCS / 10 {
                        cpu += thread_cpu().saturating_sub(c);
                        took.push(latency);
                    }
                    std::io::Result::Ok(())
                });
                drop(f);
                let _ = std::fs::remove_file(&path);
                result.map(|()| (took, cpu))
            })
        })
        .collect();
    let (mut rec, mut cpu) = (Recorder::new()?, Duration::ZERO);
    for t in threads {
        let (took, spent) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a sync thread panicked"))??;
        took.into_iter().for_each(|d| rec.record(d));
        cpu += spent;
    }
    let summary = rec.summary().context("no fdatasync recorded")?;
    let cpu_ns = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX) / summary.count.max(1);
    Ok((summary, cpu_ns))
}

/// The CPU time this thread has used (zero where the clock cannot be read).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_round_trip_and_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let b = Baseline::measure(dir.path(), &[3, 1, 3], &[2, 1, 2], 1).unwrap();
        assert_eq!(b.tcp_round_trip.count, SAMPLES as u64);
        assert_eq!(b.fdatasync.count, SYNCS as u64);
        let shared: Vec<(u32, u64)> = b
            .shared_fdatasync
            .iter()
            .map(|s| (s.writers, s.fdatasync.count))
            .collect();
        assert_eq!(
            shared,
            [(3, 3 * SYNCS as u64)],
            "every writer's syncs, once per count"
        );
        assert_eq!(
            b.shared_floor_ns(3),
            Some(b.tcp_round_trip.p50_ns + b.shared_fdatasync[0].fdatasync.p50_ns)
        );
        assert_eq!(b.shared_floor_ns(1), None);
        assert_eq!(
            b.replicated_floor_ns(3),
            Some(b.shared_floor_ns(3).unwrap() + b.tcp_round_trip.p50_ns)
        );
        assert_eq!(b.replicated_floor_ns(1), None);
        assert!(b.tcp_round_trip.p50_ns > 0 && b.fdatasync.p50_ns > 0);
        assert!(
            b.fdatasync_cpu_ns > 0 && b.fdatasync_cpu_ns < b.fdatasync.max_ns,
            "a sync takes some CPU, and less than its wall time: {}",
            b.fdatasync_cpu_ns
        );
        assert_eq!(b.floor_ns(), b.tcp_round_trip.p50_ns + b.fdatasync.p50_ns);
        let counts: Vec<u32> = b.echo_ceiling.iter().map(|c| c.clients).collect();
        assert_eq!(counts, [1, 2], "one ceiling per distinct client count");
        assert!(b.ceiling(2).unwrap() > 0.0);
        assert_eq!(b.ceiling(3), None);
        assert!(b
            .echo_ceiling
            .iter()
            .all(|c| c.in_flight == 1 && c.tokio_requests_per_s > 0.0));
        // With requests in flight, both servers echo every one sent (a lost echo would
        // leave its client waiting, and this call with it).
        for server in [EchoServer::Threads, EchoServer::Tokio(2)] {
            let rate = echo_ceiling(2, 8, Duration::from_millis(300), server).unwrap();
            assert!(rate > 0.0, "{server:?}");
        }
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the sync file is removed"
        );
    }
}
