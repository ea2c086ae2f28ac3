//! `weft-bench`: criterion benchmarks of weft and the helpers they share.
//!
//! Every figure weft quotes is a ratio against a baseline measured in the same run (the
//! transport's raw round trip, the full layer stack), because the machines that run these
//! benches are shared and noisy.

pub mod kv;
pub mod raft_cluster;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use weft_transport::{
    BackendConfig, Capability, ClusterKey, LayerKind, LayerTuning, NodeId, NodeSpec, Transport,
    TransportConfig,
};

/// A config for `local` in a cluster of `n` nodes on `backend`, with an explicit layer
/// stack (`None`: whatever `require` calls for).
pub fn cluster_config(
    cluster: u64,
    local: u32,
    addrs: &[SocketAddr],
    backend: BackendConfig,
    layers: Option<Vec<LayerKind>>,
    fast_path: bool,
) -> TransportConfig {
    TransportConfig {
        cluster_id: cluster,
        local: NodeId(local),
        nodes: NodeSpec::numbered(addrs),
        backend,
        require: vec![Capability::Reliable, Capability::FifoPerPeer],
        max_message: 1024,
        layers,
        fast_path,
        tuning: LayerTuning::default(),
        key: ClusterKey::new(vec![0x5a; 32]),
    }
}

/// `n` free loopback UDP addresses.
pub fn loopback_addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|_| {
            UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free loopback port")
        })
        .collect()
}

/// Node 1 of a fresh two-node cluster `cluster` on `backend` with `layers`, and node 2
/// answering it: the two ends of a round-trip measurement.
pub fn echo_pair(
    cluster: u64,
    backend: impl Fn() -> BackendConfig,
    layers: Vec<LayerKind>,
    fast_path: bool,
) -> (Box<dyn Transport>, Echo) {
    let addrs = loopback_addrs(2);
    let end = |id| {
        let cfg = cluster_config(
            cluster,
            id,
            &addrs,
            backend(),
            Some(layers.clone()),
            fast_path,
        );
        weft_transport::open(&cfg).expect("open a benchmark transport")
    };
    (end(1), Echo::start(end(2)))
}

/// Answers every message with the same bytes until dropped: the far end of a round trip.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    /// Starts echoing on `t` in a thread of its own.
    pub fn start(t: Box<dyn Transport>) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Ok(d) = t.inbox().recv_timeout(Duration::from_millis(20)) {
                    let _ = t.send(d.from, d.bytes);
                }
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
