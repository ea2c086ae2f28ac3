//! What a durable write cannot beat, measured in the same run as the matrix (these
//! machines are shared and noisy, so a figure is only quoted against a baseline taken
//! beside it): a loopback TCP round trip, as a client's request and answer make, and one
//! `fdatasync` of a small append in the directory the nodes write to.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::latency::{Recorder, Summary};

/// Round trips and syncs measured (after a tenth as many unmeasured ones).
const SAMPLES: usize = 2000;
const SYNCS: usize = 300;
/// The size of one request on the wire, and of one appended log record.
const MESSAGE: usize = 128;

/// The floor a write's latency is compared against.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// Loopback TCP round trips of a `MESSAGE`-byte request and its echo.
    pub tcp_round_trip: Summary,
    /// `fdatasync` after appending `MESSAGE` bytes to a file beside the nodes' data.
    pub fdatasync: Summary,
}

impl Baseline {
    /// Loopback round trip plus one fdatasync, medians, in nanoseconds: the floor.
    pub fn floor_ns(&self) -> u64 {
        self.tcp_round_trip.p50_ns + self.fdatasync.p50_ns
    }

    /// Measures both in `dir` (created if missing).
    pub fn measure(dir: &Path) -> anyhow::Result<Baseline> {
        Ok(Baseline {
            tcp_round_trip: tcp_round_trip()?,
            fdatasync: fdatasync(dir)?,
        })
    }
}

fn tcp_round_trip() -> anyhow::Result<Summary> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; MESSAGE];
        loop {
            if s.read_exact(&mut buf).is_err() {
                return Ok(()); // the client is done
            }
            s.write_all(&buf)?;
        }
    });
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

fn fdatasync(dir: &Path) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fdatasync-baseline");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut rec = Recorder::new()?;
    let record = [0x5au8; MESSAGE];
    for i in 0..SYNCS + SYNCS / 10 {
        f.write_all(&record)?;
        let t = Instant::now();
        f.sync_data()?;
        if i >= SYNCS / 10 {
            rec.record(t.elapsed());
        }
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    rec.summary().context("no fdatasync recorded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_round_trip_and_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let b = Baseline::measure(dir.path()).unwrap();
        assert_eq!(b.tcp_round_trip.count, SAMPLES as u64);
        assert_eq!(b.fdatasync.count, SYNCS as u64);
        assert!(b.tcp_round_trip.p50_ns > 0 && b.fdatasync.p50_ns > 0);
        assert_eq!(b.floor_ns(), b.tcp_round_trip.p50_ns + b.fdatasync.p50_ns);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the sync file is removed"
        );
    }
}
