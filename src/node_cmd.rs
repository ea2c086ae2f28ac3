//! `weft node`: one long-running cluster member, with its durable log, its transport and
//! its client service.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use weft_raft::node::{Node, RaftSettings};
use weft_raft::service::serve;
use weft_raft::service::settings::ServiceSettings;
use weft_raft::storage::{DiskStorage, StorageOptions};
use weft_raft::Config;
use weft_transport::{BackendConfig, ClusterConfig};

use crate::cli::RunNodeArgs;

/// Runs the node until the process is killed, or until its storage fails.
pub fn run(args: &RunNodeArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(&args.config)?;
    let id = args.id;
    let transport_cfg = cluster.transport_for(id)?;
    if let BackendConfig::Rdma(rdma) = &transport_cfg.backend {
        if rdma.is_emulated() {
            bail!(
                "{}: transport.rdma.device = \"emulated\" connects the members of one process \
                 only, and `weft node` runs one member per process: its peers would never be \
                 reached. Name a real verbs device (`ibv_devices` lists them), or run an emulated \
                 cluster inside one process through the library, as `cargo bench -p weft-bench` does",
                args.config.display()
            );
        }
    }
    let settings: RaftSettings = cluster.section("raft")?;
    let service_settings: ServiceSettings = cluster.section("service")?;
    let listen = *cluster.clients.get(&id).ok_or_else(|| {
        anyhow!(
            "{}: node {id} has no `client` address in cluster.nodes; `weft node` serves clients there",
            args.config.display()
        )
    })?;
    // Every setting is checked, each against the others, before anything is opened.
    let max_message = transport_cfg.max_message;
    let node_cfg = settings
        .node_config(id, &cluster.node_ids(), max_message)
        .with_context(|| args.config.display().to_string())?;
    let max_entry = node_cfg
        .raft
        .max_entry_bytes
        .min(Config::room_in(max_message));
    let mut service = service_settings
        .server_config(listen, max_entry)
        .with_context(|| args.config.display().to_string())?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| weft::default_data_dir(&args.config, id.0));
    let (store, recovered) =
        DiskStorage::open(&dir, cluster.cluster_id, id, StorageOptions::default())
            .with_context(|| format!("opening the data directory {}", dir.display()))?;
    tracing::info!(
        node = %id,
        dir = %dir.display(),
        term = recovered.hard_state.term,
        entries = recovered.entries.len(),
        snapshot = recovered.snapshot.as_ref().map(|s| s.meta.index),
        "recovered"
    );
    let transport = weft_transport::open(&transport_cfg)?;
    let node = Node::start(node_cfg, recovered, Box::new(store), transport)?;
    service.peers_clients = cluster.clients.clone();
    service.cluster = Some(cluster.cluster_id);
    let server = serve(service, node.handle())?;
    tracing::info!(node = %id, clients = %server.local_addr(), "serving");
    let handle = node.handle();
    let mut last = None;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(why) = node.failure() {
            return Err(anyhow!("node {id} stopped: {why}"));
        }
        if let Some(s) = handle.status() {
            let now = (s.role.clone(), s.term, s.leader);
            if last.as_ref() != Some(&now) {
                tracing::info!(node = %id, role = %s.role, term = s.term, leader = ?s.leader, "state");
                last = Some(now);
            }
        }
    }
}
