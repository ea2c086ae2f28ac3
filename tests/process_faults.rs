//! Process-level faults on loopback: three `weft node` processes, 16 concurrent clients,
//! `kill -9` of the leader and of a follower several times with restarts from the
//! write-ahead log. Every acknowledged write must survive and the whole client history must
//! be linearizable (checked with `weft_raft::lincheck`); the same with a leader frozen
//! (SIGSTOP) past an election timeout and woken. Membership grows 3 → 5 and shrinks back
//! under the same load. Each test is bounded (about 20 s).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft::local_cluster::{Fabric, LocalCluster};
use weft_raft::lincheck::{check, Event, KvOp, KvRet};
use weft_raft::NodeId;

const KEYS: u64 = 8;

fn exe() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_weft").into()
}

fn value(b: &Option<Bytes>) -> Option<u64> {
    b.as_ref()
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

/// Clients issuing puts, compare-and-sets and linearizable gets until `stop`, recording
/// what they saw.
struct Workload {
    t0: Instant,
    history: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(cluster: &LocalCluster, clients: u64) -> Workload {
        let t0 = Instant::now();
        let now = move || t0.elapsed().as_nanos() as u64;
        let history = Arc::new(Mutex::new(Vec::<Event>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..clients)
            .map(|w| {
                let mut c = cluster.client(Duration::from_secs(10)).unwrap();
                let (history, stop) = (Arc::clone(&history), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && n < 2000 {
                        n += 1;
                        let key = (w * 7 + n * 13) % KEYS;
                        let name = format!("k{key}");
                        let fresh = w * 1_000_000 + n;
                        let mut call = now();
                        let (op, ret) = match n % 4 {
                            0 | 1 => {
                                let r = c.put(&name, Bytes::from(fresh.to_string()));
                                (KvOp::Put { key, value: fresh }, r.map(|_| KvRet::Done).ok())
                            }
                            2 => {
                                let Ok(current) = c.get(&name) else { continue };
                                let expected = value(&current);
                                call = now();
                                let r = c.cas(
                                    &name,
                                    expected.map(|e| Bytes::from(e.to_string())),
                                    Some(Bytes::from(fresh.to_string())),
                                );
                                let op = KvOp::Cas {
                                    key,
                                    expected,
                                    new: fresh,
                                };
                                (op, r.map(|o| KvRet::Swapped(o.swapped)).ok())
                            }
                            _ => match c.get(&name) {
                                Ok(v) => (KvOp::Get { key }, Some(KvRet::Value(value(&v)))),
                                Err(_) => continue, // a failed read did nothing
                            },
                        };
                        let ev = Event {
                            op,
                            call,
                            ret_at: now(),
                            ret: ret.unwrap_or(KvRet::Unknown),
                        };
                        history.lock().unwrap().push(ev);
                    }
                })
            })
            .collect();
        Workload {
            t0,
            history,
            stop,
            workers,
        }
    }

    /// Stops the clients, reads every key once more, and checks the whole history.
    fn finish(self, cluster: &LocalCluster) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join().unwrap();
        }
        let mut c = cluster.client(Duration::from_secs(20)).unwrap();
        let mut history = self.history.lock().unwrap().clone();
        for key in 0..KEYS {
            let call = self.t0.elapsed().as_nanos() as u64;
            let v = c.get(&format!("k{key}")).expect("final read");
            history.push(Event {
                op: KvOp::Get { key },
                call,
                ret_at: self.t0.elapsed().as_nanos() as u64,
                ret: KvRet::Value(value(&v)),
            });
        }
        let acked = history
            .iter()
            .filter(|e| matches!(e.ret, KvRet::Done))
            .count();
        assert!(acked > 100, "only {acked} acknowledged writes");
        if let Err(v) = check(&history) {
            panic!(
                "{v}; {}; node 1 log:\n{}",
                post_mortem(cluster, &history, v.key),
                cluster.log(1)
            );
        }
    }
}

/// Saves the history of `key` (one event per line, in call order) and every node's log
/// beside the test binaries, and says where.
fn post_mortem(cluster: &LocalCluster, history: &[Event], key: u64) -> String {
    let mut events: Vec<&Event> = history.iter().filter(|e| e.op.key() == key).collect();
    events.sort_by_key(|e| e.call);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("process-faults-{}", std::process::id()));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| {
            let text: String = events.iter().map(|e| format!("{e:?}\n")).collect();
            std::fs::write(dir.join(format!("history-key{key}.txt")), text)
        })
        .and_then(|()| {
            (1..=5)
                .map(|id| (id, cluster.log(id)))
                .filter(|(_, log)| !log.is_empty())
                .try_for_each(|(id, log)| std::fs::write(dir.join(format!("node-{id}.log")), log))
        });
    match saved {
        Ok(()) => format!("history and node logs in {}", dir.display()),
        Err(e) => format!("could not save the history: {e}"),
    }
}

fn running(dir: &std::path::Path, nodes: u32, voters: u32, fabric: Fabric) -> LocalCluster {
    let mut cluster = LocalCluster::create(dir, &exe(), nodes, voters, fabric).unwrap();
    for id in 1..=nodes {
        cluster.start(id).unwrap();
    }
    assert!(
        cluster.leader(Duration::from_secs(20)).is_some(),
        "no leader:\n{}",
        cluster.log(1)
    );
    cluster
}

#[test]
fn kill_nine_leaders_and_followers_loses_no_acknowledged_write() {
    kill_nine(Fabric::Udp);
}

/// The same on the Data Vortex emulator: a switch process, nodes attached to it, each
/// `kill -9` seen by the others at the next barrier.
#[test]
fn kill_nine_on_the_vortex_fabric_loses_no_acknowledged_write() {
    kill_nine(Fabric::Vortex);
}

/// The same on `ptp`: deadline-ordered UDP with the layers on top.
#[test]
fn kill_nine_on_the_ptp_fabric_loses_no_acknowledged_write() {
    kill_nine(Fabric::Ptp);
}

fn kill_nine(fabric: Fabric) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = running(dir.path(), 3, 3, fabric);
    let load = Workload::start(&cluster, 16);
    // Kill the leader, then a follower, then the leader again..., restarting each.
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        let Some((leader, _)) = cluster.leader(Duration::from_secs(10)) else {
            panic!("round {round}: no leader")
        };
        let victim = if round % 2 == 0 {
            leader
        } else {
            leader % 3 + 1
        };
        cluster.kill(victim);
        std::thread::sleep(Duration::from_millis(1000));
        cluster.start(victim).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    load.finish(&cluster);
}

/// A leader frozen (SIGSTOP) for longer than an election timeout comes back believing it
/// leads, with clients' requests queued on its sockets: nothing it answers may be stale.
#[test]
fn a_frozen_leader_that_wakes_up_answers_nothing_stale() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = running(dir.path(), 3, 3, Fabric::Udp);
    let load = Workload::start(&cluster, 16);
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(1000));
        let Some((leader, _)) = cluster.leader(Duration::from_secs(10)) else {
            panic!("round {round}: no leader")
        };
        cluster.freeze(leader, true).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        cluster.freeze(leader, false).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    load.finish(&cluster);
}

#[test]
fn grow_three_to_five_and_shrink_back_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = running(dir.path(), 5, 3, Fabric::Udp);
    let load = Workload::start(&cluster, 8);
    let mut admin = cluster.client(Duration::from_secs(20)).unwrap();
    let voters = |admin: &mut weft_raft::client::Client| {
        let s = admin.status().unwrap();
        (s.membership.voters.len(), s.membership.is_joint())
    };
    // Grow by adding 4 and 5, then shrink by removing 1 and 2: (node, add?, voters after).
    for (node, add, want) in [(4, true, 4), (5, true, 5), (1, false, 4), (2, false, 3)] {
        std::thread::sleep(Duration::from_millis(500));
        if add {
            admin.add_node(NodeId(node)).expect("add a voter");
        } else {
            admin.remove_node(NodeId(node)).expect("remove a voter");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while voters(&mut admin) != (want, false) {
            assert!(
                Instant::now() < deadline,
                "membership never reached {want} voters"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(1000));
    load.finish(&cluster);
}

#[test]
fn a_node_refuses_another_clusters_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = LocalCluster::create(dir.path(), &exe(), 1, 1, Fabric::Udp).unwrap();
    a.start(1).unwrap();
    assert!(a.leader(Duration::from_secs(20)).is_some());
    a.kill(1);
    drop(a);
    // A new cluster (new id) in the same directory finds node 1's old data.
    let mut b = LocalCluster::create(dir.path(), &exe(), 1, 1, Fabric::Udp).unwrap();
    b.start(1).unwrap();
    let status = b
        .wait_exit(1, Duration::from_secs(20))
        .expect("the node refuses to start");
    assert!(!status.success());
    let log = b.log(1);
    assert!(
        log.contains("belongs to cluster"),
        "the error names the cluster mismatch:\n{log}"
    );
}

/// `weft node` refuses, before it opens anything, a cluster file it cannot run: each
/// error names what is wrong, and the process exits at once instead of running a member
/// that can never take part.
#[test]
fn a_node_refuses_settings_it_cannot_run_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = |transport: &str, extra: &str| {
        format!(
            "[cluster]\nid = 7\nnodes = [\n  {{ id = 1, addr = \"127.0.0.1:1\", client = \"127.0.0.1:0\" }},\n  \
             {{ id = 2, addr = \"127.0.0.1:2\", client = \"127.0.0.1:0\" }},\n]\n\n{transport}\n{extra}"
        )
    };
    let udp = "[transport]\nkind = \"udp\"\n";
    let cases = [
        (
            cluster(
                "[transport]\nkind = \"rdma\"\n\n[transport.rdma]\ndevice = \"emulated\"\n",
                "",
            ),
            "connects the members of one process",
        ),
        (cluster(udp, "[raft]\ntick_ms = 0\n"), "raft.tick_ms"),
        (
            cluster(udp, "[raft]\nelection_tick = 1\n"),
            "raft.election_tick",
        ),
        (
            cluster(udp, "[service]\nmax_value = 8388608\n"),
            "service.max_value",
        ),
        (cluster(udp, "[service]\nbogus = 1\n"), "bogus"),
    ];
    for (i, (text, says)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("cluster-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(exe())
            .args(["node", "--id", "1", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{i}")))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started:\n{stderr}");
        assert!(
            stderr.contains(says),
            "case {i} should say {says:?}:\n{stderr}"
        );
    }
}
