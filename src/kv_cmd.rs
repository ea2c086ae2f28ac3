//! `weft kv`, `weft status` and `weft cluster`: a client of a running cluster.

use anyhow::bail;
use bytes::Bytes;
use weft_raft::client::{Client, ClientConfig};
use weft_raft::service::protocol::Consistency;
use weft_transport::ClusterConfig;

use crate::cli::{ClusterArgs, ClusterCommand, KvArgs, KvCommand, StatusArgs};

fn client(config: &std::path::Path, stale: bool) -> anyhow::Result<(ClusterConfig, Client)> {
    let cluster = ClusterConfig::load(config)?;
    if cluster.clients.is_empty() {
        bail!(
            "{}: no node has a `client` address; nothing to connect to",
            config.display()
        );
    }
    let mut cfg = ClientConfig::for_cluster(&cluster);
    if stale {
        cfg.consistency = Consistency::Stale;
    }
    let c = Client::new(cfg)?;
    Ok((cluster, c))
}

fn show(v: Option<Bytes>) -> String {
    match v {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => "(none)".into(),
    }
}

/// `weft kv get|put|del|cas|all`.
pub fn run_kv(args: &KvArgs) -> anyhow::Result<()> {
    let (_, mut c) = client(&args.config, args.stale)?;
    match &args.command {
        KvCommand::Get { key } => println!("{}", show(c.get(key)?)),
        KvCommand::All => {
            for (k, v) in c.get_all()? {
                println!("{k} = {}", String::from_utf8_lossy(&v));
            }
        }
        KvCommand::Put { key, value } => {
            let prev = c.put(key, Bytes::from(value.clone()))?;
            println!("ok (was {})", show(prev));
        }
        KvCommand::Del { key } => println!("ok (was {})", show(c.delete(key)?)),
        KvCommand::Cas { key, expected, new } => {
            let expected = expected.as_ref().map(|e| Bytes::from(e.clone()));
            let new = new.as_ref().map(|n| Bytes::from(n.clone()));
            let o = c.cas(key, expected, new)?;
            println!(
                "{} (found {})",
                if o.swapped { "swapped" } else { "not swapped" },
                show(o.current)
            );
        }
    }
    Ok(())
}

/// `weft status`: every node's diagnostic in one table.
pub fn run_status(args: &StatusArgs) -> anyhow::Result<()> {
    let (cluster, c) = client(&args.config, true)?;
    println!(
        "{:>4} {:<12} {:>6} {:>6} {:>7} {:>9} {:>9} {:>9}  {:<24} w/s(10s)",
        "node", "role", "term", "vote", "leader", "commit", "applied", "last", "client"
    );
    for (id, addr) in &cluster.clients {
        match c.status_of(*addr) {
            Ok(s) => println!(
                "{:>4} {:<12} {:>6} {:>6} {:>7} {:>9} {:>9} {:>9}  {:<24} {:?}",
                id.to_string(),
                s.role,
                s.term,
                s.voted_for.map_or("-".into(), |v| v.to_string()),
                s.leader.map_or("-".into(), |v| v.to_string()),
                s.commit,
                s.applied,
                s.last_index,
                addr.to_string(),
                s.writes_per_s
            ),
            Err(e) => println!("{:>4} {:<12} {e}", id.to_string(), "unreachable"),
        }
    }
    // Clock synchronization, on fabrics that measure it (ptp).
    for (id, addr) in &cluster.clients {
        let Ok(s) = c.status_of(*addr) else { continue };
        if s.clock_offsets.is_empty() {
            continue;
        }
        let peers: Vec<String> = s
            .clock_offsets
            .iter()
            .map(|o| {
                format!(
                    "{}: {:+.1} µs (delay {:.1} µs)",
                    o.peer,
                    o.offset_ns as f64 / 1e3,
                    o.delay_ns as f64 / 1e3
                )
            })
            .collect();
        println!(
            "clocks at node {id} (total_order {}, {} elections): {}",
            if s.total_order { "on" } else { "WITHDRAWN" },
            if s.ordered_elections {
                "ordered"
            } else {
                "ordinary"
            },
            peers.join(", ")
        );
    }
    Ok(())
}

/// `weft cluster add|remove|transfer`.
pub fn run_cluster(args: &ClusterArgs) -> anyhow::Result<()> {
    let (_, mut c) = client(&args.config, false)?;
    match args.command {
        ClusterCommand::Add { node } => {
            println!("membership change at index {}", c.add_node(node)?)
        }
        ClusterCommand::Learner { node } => {
            println!("membership change at index {}", c.add_learner(node)?)
        }
        ClusterCommand::Remove { node } => {
            println!("membership change at index {}", c.remove_node(node)?)
        }
        ClusterCommand::Transfer { node } => {
            c.transfer_leader(node)?;
            println!("leadership transfer to node {node} requested");
        }
    }
    Ok(())
}
