//! A cluster of `weft node` processes on loopback, for the demo and for process-level fault
//! tests: it writes a config (UDP with the reliable, fifo and auth layers and a fresh key,
//! or a Data Vortex fabric served by a `weft vortex-switch` process it starts), starts,
//! kills (SIGKILL) and restarts nodes, and finds the leader. It also runs named helper
//! processes beside the nodes (the participants of `weft fedavg`), the same way. Every
//! process it started is killed when it is dropped, so a failing run leaves nothing
//! behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use weft_raft::client::{Client, ClientConfig};

/// The fabric a local cluster runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fabric {
    /// UDP on loopback with the reliable, fifo and auth layers (the default transport).
    Udp,
    /// The Data Vortex emulator: a `weft vortex-switch` process the nodes attach to.
    Vortex,
    /// UDP on loopback between clocks that agree (the processes share the system clock),
    /// delivered in deadline order, with the reliable, fifo and auth layers.
    Ptp,
}

/// Node processes of one loopback cluster.
pub struct LocalCluster {
    dir: PathBuf,
    config: PathBuf,
    exe: PathBuf,
    procs: BTreeMap<u32, Child>,
    clients: BTreeMap<u32, SocketAddr>,
    cluster_id: u64,
    switch: Option<Child>,
    helpers: BTreeMap<String, Child>,
}

/// A loopback address whose port is free for TCP and UDP now, chosen at random below the
/// kernel's ephemeral range and never twice by one process. A port the kernel hands out
/// for `bind(0)` or for an outgoing connection could go, while a killed node is down, to a
/// client socket or to another test's cluster: the node then cannot restart, or (before
/// clients checked the cluster id) another cluster's clients reach it.
fn free_port() -> anyhow::Result<SocketAddr> {
    static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(11_000));
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut state = weft_raft::random::seed();
    for _ in 0..1_000 {
        let port = low + (weft_raft::random::next(&mut state) % u64::from(high - low)) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !taken.contains(&port)
            && TcpListener::bind(addr).is_ok()
            && UdpSocket::bind(addr).is_ok()
        {
            taken.insert(port);
            return Ok(addr);
        }
    }
    anyhow::bail!("no free loopback port in {low}..{high} after 1,000 tries")
}

impl LocalCluster {
    /// Writes the config of an `n`-node cluster into `dir` (whose first `voters` nodes
    /// start as voters), to be run by the `weft` executable `exe` on `fabric`. Starts no
    /// node; on `vortex` it starts the switch process.
    pub fn create(
        dir: &Path,
        exe: &Path,
        n: u32,
        voters: u32,
        fabric: Fabric,
    ) -> anyhow::Result<LocalCluster> {
        fs::create_dir_all(dir)?;
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut key)
            .context("reading a fresh cluster key from /dev/urandom")?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        fs::write(
            dir.join("cluster.key"),
            format!("# generated for a local cluster\n{hex}\n"),
        )?;
        let mut clients = BTreeMap::new();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let client = free_port()?;
            clients.insert(id, client);
            nodes.push(match fabric {
                Fabric::Udp | Fabric::Ptp => format!(
                    "  {{ id = {id}, addr = \"{}\", client = \"{client}\" }},",
                    free_port()?
                ),
                Fabric::Vortex => format!("  {{ id = {id}, client = \"{client}\" }},"),
            });
        }
        let layered = "require = [\"reliable\", \"fifo_per_peer\", \"authenticated_source\"]\n";
        let (transport, switch) = match fabric {
            Fabric::Udp => (format!("kind = \"udp\"\n{layered}"), None),
            Fabric::Ptp => (format!("kind = \"ptp\"\n{layered}"), None),
            Fabric::Vortex => {
                let socket = dir.join("switch.sock");
                let switch = start_switch(exe, &socket, dir, n)?;
                (
                    format!(
                        "kind = \"vortex\"\nrequire = [\"reliable\", \"fifo_per_peer\", \"authenticated_source\", \"total_order\", \"barrier\"]\n\n\
                         [transport.vortex]\nfabric = \"unix:{}\"\n",
                        socket.display()
                    ),
                    Some(switch),
                )
            }
        };
        let cluster_id = u64::from(u32::from_le_bytes([key[0], key[1], key[2], key[3]]));
        let voters: Vec<String> = (1..=voters).map(|v| v.to_string()).collect();
        let text = format!(
            "# generated for a local cluster\n[cluster]\nid = {}\nnodes = [\n{}\n]\n\n\
             [transport]\n{transport}\n\
             [raft]\ntick_ms = 15\nvoters = [{}]\n\n[security]\nkey_file = \"cluster.key\"\n",
            cluster_id,
            nodes.join("\n"),
            voters.join(", ")
        );
        let config = dir.join("cluster.toml");
        fs::write(&config, text)?;
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            config,
            exe: exe.to_path_buf(),
            procs: BTreeMap::new(),
            clients,
            cluster_id,
            switch,
            helpers: BTreeMap::new(),
        })
    }

    /// Sets `key = value` in the config's `[raft]` table (for nodes started afterwards):
    /// benchmarks compare settings such as `snapshot_entries` this way.
    pub fn set_raft(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let text = fs::read_to_string(&self.config)?;
        let (head, tail) = text
            .split_once("[raft]\n")
            .context("the generated config has no [raft] table")?;
        let tail: String = tail
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(
            &self.config,
            format!("{head}[raft]\n{key} = {value}\n{tail}"),
        )?;
        Ok(())
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Bytes node `id` holds on disk (write-ahead log, hard state, snapshots).
    pub fn disk_bytes(&self, id: u32) -> u64 {
        fn walk(p: &Path) -> u64 {
            match fs::read_dir(p) {
                Ok(entries) => entries
                    .flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        _ => e.metadata().map_or(0, |m| m.len()),
                    })
                    .sum(),
                Err(_) => 0,
            }
        }
        walk(&crate::default_data_dir(&self.config, id))
    }

    /// The node's client address.
    pub fn client_addr(&self, id: u32) -> SocketAddr {
        self.clients[&id]
    }

    /// The directory holding the config, the data and every process's log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts node `id` (logs go to `node-ID.log` in the cluster's directory).
    pub fn start(&mut self, id: u32) -> anyhow::Result<()> {
        let mut args = vec!["node".into(), "--config".into(), self.config.clone().into()];
        args.extend(["--id".into(), id.to_string().into()]);
        let child = self
            .spawn(&format!("node-{id}"), &args)
            .with_context(|| format!("starting node {id}"))?;
        self.procs.insert(id, child);
        Ok(())
    }

    /// Starts every node and waits up to `within` for one of them to lead; the leader and
    /// its term.
    pub fn start_all(&mut self, within: Duration) -> anyhow::Result<(u32, u64)> {
        let ids: Vec<u32> = self.clients.keys().copied().collect();
        for id in ids {
            self.start(id)?;
        }
        self.leader(within).ok_or_else(|| {
            anyhow::anyhow!(
                "no leader within {} s; node logs are in {}",
                within.as_secs(),
                self.dir.display()
            )
        })
    }

    /// Starts `weft ARGS...` as the helper process `name` (logs go to `NAME.log` in the
    /// cluster's directory); it is killed with the cluster.
    pub fn start_helper(&mut self, name: &str, args: &[std::ffi::OsString]) -> anyhow::Result<()> {
        let child = self
            .spawn(name, args)
            .with_context(|| format!("starting {name}"))?;
        self.helpers.insert(name.to_string(), child);
        Ok(())
    }

    /// Kills the helper `name` with SIGKILL.
    pub fn kill_helper(&mut self, name: &str) {
        if let Some(mut c) = self.helpers.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status of helper `name` if it has exited (it is then forgotten).
    pub fn helper_exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let status = self.helpers.get_mut(name)?.try_wait().ok()??;
        self.helpers.remove(name);
        Some(status)
    }

    /// Runs the `weft` executable with `args`, its output appended to `NAME.log`.
    fn spawn(&self, name: &str, args: &[std::ffi::OsString]) -> anyhow::Result<Child> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        Ok(Command::new(&self.exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }

    /// Kills node `id` with SIGKILL: no clean shutdown, only what it fsynced survives.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut c) = self.procs.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) node `id`: a process frozen for longer than
    /// an election timeout and then woken is how a deposed leader comes back believing it
    /// still leads.
    pub fn freeze(&self, id: u32, frozen: bool) -> anyhow::Result<()> {
        let c = self.procs.get(&id).context("node not running")?;
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &c.id().to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill {signal} {} failed", c.id());
        Ok(())
    }

    /// Waits up to `within` for node `id` to exit on its own; its exit status if it did.
    pub fn wait_exit(&mut self, id: u32, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.procs.get_mut(&id) {
                if let Ok(Some(status)) = c.try_wait() {
                    self.procs.remove(&id);
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What node `id` logged so far.
    pub fn log(&self, id: u32) -> String {
        self.log_of(&format!("node-{id}"))
    }

    /// What the process `name` (`node-ID` or a helper's name) logged so far.
    pub fn log_of(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Whether node `id` is running (as far as this harness knows).
    pub fn is_running(&self, id: u32) -> bool {
        self.procs.contains_key(&id)
    }

    /// A client of the whole cluster, with retries bounded by `max_total`.
    pub fn client(&self, max_total: Duration) -> anyhow::Result<Client> {
        let mut cfg = ClientConfig::new(self.clients.values().copied());
        cfg.cluster = Some(self.cluster_id);
        cfg.request_timeout = Duration::from_secs(2);
        cfg.max_total = max_total;
        Ok(Client::new(cfg)?)
    }

    /// Waits up to `within` until node `id` has applied what the leader had committed when
    /// this was called; returns that index, or says how far the node got.
    pub fn wait_caught_up(&self, id: u32, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        let probe = self.client(within)?;
        let (leader, _) = self
            .leader(within)
            .ok_or_else(|| anyhow::anyhow!("no leader within {within:?}"))?;
        let target = probe.status_of(self.client_addr(leader))?.commit;
        loop {
            let applied = probe
                .status_of(self.client_addr(id))
                .map_or(0, |s| s.applied);
            if applied >= target {
                return Ok(target);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("node {id} applied {applied} of {target} after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running node that reports itself leader, with its term, waiting up to `within`.
    pub fn leader(&self, within: Duration) -> Option<(u32, u64)> {
        let probe = self.client(within).ok()?;
        let deadline = Instant::now() + within;
        loop {
            for (id, addr) in &self.clients {
                if !self.procs.contains_key(id) {
                    continue;
                }
                if let Ok(s) = probe.status_of(*addr) {
                    if s.is_leader() {
                        return Some((*id, s.term));
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts `weft vortex-switch SOCKET`, admitting nodes 1 to `n` only, and waits for its
/// socket to appear.
fn start_switch(exe: &Path, socket: &Path, dir: &Path, n: u32) -> anyhow::Result<Child> {
    let log = fs::File::create(dir.join("switch.log"))?;
    let members: Vec<String> = (1..=n).map(|id| id.to_string()).collect();
    let mut child = Command::new(exe)
        .arg("vortex-switch")
        .arg(socket)
        .arg("--members")
        .arg(members.join(","))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the Data Vortex switch emulator")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "the switch emulator exited ({status}); see {}",
                dir.join("switch.log").display()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            anyhow::bail!(
                "the switch emulator did not listen on {} within 10 s",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let helpers: Vec<String> = self.helpers.keys().cloned().collect();
        for name in helpers {
            self.kill_helper(&name);
        }
        let ids: Vec<u32> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if let Some(mut s) = self.switch.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_settings_are_set_and_replaced_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LocalCluster::create(dir.path(), Path::new("weft"), 3, 3, Fabric::Udp).unwrap();
        c.set_raft("snapshot_entries", "50").unwrap();
        c.set_raft("snapshot_entries", "70").unwrap();
        let cfg = weft_transport::ClusterConfig::load(c.config()).unwrap();
        let raft: weft_raft::node::RaftSettings = cfg.section("raft").unwrap();
        assert_eq!(raft.snapshot_entries, Some(70));
        assert_eq!(raft.tick_ms, Some(15), "the other settings stay");
    }
}
