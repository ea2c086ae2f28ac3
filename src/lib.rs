//! The `weft` package's library half: pieces of the command line that tests drive too.

pub mod fedavg;
pub mod local_cluster;

use std::path::{Path, PathBuf};

/// Where node `id` keeps its data unless told otherwise: `weft-data/node-ID` beside the
/// config file (so a local cluster's nodes and a benchmark's disk figures agree on it).
pub fn default_data_dir(config: &Path, id: u32) -> PathBuf {
    let base = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    base.join("weft-data").join(format!("node-{id}"))
}
