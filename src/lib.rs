//! The `weft` package's library half: pieces of the command line that tests drive too.

pub mod fedavg;
pub mod local_cluster;
