//! The cluster config file: one TOML file per cluster, loaded into a [`ClusterConfig`] and
//! turned into a [`TransportConfig`] per member with [`ClusterConfig::transport_for`].
//!
//! ```toml
//! [cluster]
//! id = 42
//! nodes = [
//!   { id = 1, addr = "127.0.0.1:7101" },
//!   { id = 2, addr = "127.0.0.1:7102" },
//! ]
//!
//! [transport]
//! kind = "udp"                        # "mem" | "udp" | "vortex" | "rdma"
//! require = ["reliable", "fifo_per_peer", "authenticated_source"]
//! max_message = 1048576               # bytes, 1..=64 MiB
//! fast_path = true
//! # layers = ["fragment", "fifo", "reliable", "auth"]   # explicit stack, top first
//!
//! [transport.udp]                     # settings of the udp backend
//! max_datagram = 1472
//!
//! [transport.reliable]                # layer tuning
//! window = 1024
//! rto_ms = 20
//! max_rto_ms = 1000
//! gap_timeout_ms = 200
//!
//! [security]
//! key_file = "cluster.key"            # relative to this file's directory
//! ```
//!
//! Every table rejects unknown keys, so a typo is reported rather than silently ignored.
//! Errors name the file and the dotted key (`cluster.nodes[2].addr`; node indexes count from
//! 0 in file order). The cluster key is read and checked when the config is loaded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::ptp;
use crate::frame::HEADER_LEN;

use crate::{
    BackendConfig, Capability, ClusterKey, ConfigError, LayerKind, LayerTuning, MemConfig, NodeId,
    NodeSpec, PtpConfig, RdmaConfig, TransportConfig, UdpConfig, VortexConfig,
};

/// Backend kinds this build can open.
const AVAILABLE_KINDS: [&str; 5] = ["mem", "udp", "vortex", "rdma", "ptp"];

/// Default `transport.max_message`: 1 MiB.
const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Largest accepted `transport.max_message`: 64 MiB.
const MAX_MAX_MESSAGE: usize = 64 << 20;
/// Largest accepted `transport.reliable.window`.
const MAX_WINDOW: usize = 65536;
/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65507;

/// One cluster's configuration, as loaded from its TOML file.
///
/// Everything is validated at load time, the cluster key included; per-member transport
/// settings come from [`ClusterConfig::transport_for`].
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The file this config was loaded from (used in error messages).
    pub path: PathBuf,
    /// `cluster.id`: frames carrying another cluster id are rejected.
    pub cluster_id: u64,
    /// `cluster.nodes`: every member, in file order.
    pub nodes: Vec<NodeSpec>,
    /// `transport.kind` with the settings of that backend's table (`[transport.udp]` or
    /// `[transport.mem]`), defaults where the table is absent.
    pub backend: BackendConfig,
    /// `transport.require`: capabilities every member's transport must provide.
    pub require: Vec<Capability>,
    /// `transport.max_message`: largest message the caller will send, in bytes.
    pub max_message: usize,
    /// `transport.layers`: an explicit layer stack, top first, if one was given.
    pub layers: Option<Vec<LayerKind>>,
    /// `transport.fast_path`: take the precomputed fast path for the common message.
    pub fast_path: bool,
    /// `[transport.reliable]`: timers and bounds of the layers.
    pub tuning: LayerTuning,
    /// `security.key_file`, resolved against the config file's directory.
    pub key_file: Option<PathBuf>,
    /// The cluster key read from [`Self::key_file`].
    pub key: Option<ClusterKey>,
    /// `cluster.nodes[].client`: where each node serves clients, if given.
    pub clients: BTreeMap<NodeId, SocketAddr>,
    /// Sections for the layers above the transport (`[raft]`, `[service]`), kept raw.
    sections: BTreeMap<String, toml::Table>,
}

impl ClusterConfig {
    /// Reads section `[name]` (`raft` or `service`) as `T`, or `T::default()` if absent.
    /// Errors name the file and the section; `T` should deny unknown fields.
    pub fn section<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        match self.sections.get(name) {
            None => Ok(T::default()),
            Some(table) => {
                table
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::Invalid {
                        path: self.path.clone(),
                        key: name.to_string(),
                        message: e.message().to_string(),
                    })
            }
        }
    }

    /// Reads and validates the cluster config file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config `text`. `path` names the file in error messages, and a
    /// relative `security.key_file` is resolved against its directory.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Validator { path }.validate(raw)
    }

    /// The resolved transport settings of member `node`.
    ///
    /// Fails with [`ConfigError::Invalid`] on key `cluster.nodes` if `node` is not a member.
    pub fn transport_for(&self, node: NodeId) -> Result<TransportConfig, ConfigError> {
        if !self.nodes.iter().any(|n| n.id == node) {
            let members: Vec<String> = self.node_ids().iter().map(|id| id.to_string()).collect();
            return Err(ConfigError::Invalid {
                path: self.path.clone(),
                key: "cluster.nodes".to_string(),
                message: format!(
                    "node {node} is not a member of cluster {} (members: {})",
                    self.cluster_id,
                    members.join(", ")
                ),
            });
        }
        Ok(TransportConfig {
            cluster_id: self.cluster_id,
            local: node,
            nodes: self.nodes.clone(),
            backend: self.backend.clone(),
            require: self.require.clone(),
            max_message: self.max_message,
            layers: self.layers.clone(),
            fast_path: self.fast_path,
            tuning: self.tuning.clone(),
            key: self.key.clone(),
        })
    }

    /// The ids of every member, ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort();
        ids
    }
}

/// The file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: RawCluster,
    transport: RawTransport,
    #[serde(default)]
    security: Option<RawSecurity>,
    /// Settings of the layers above the transport, read by their own crates through
    /// [`ClusterConfig::section`].
    #[serde(default)]
    raft: Option<toml::Table>,
    #[serde(default)]
    service: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    id: u64,
    nodes: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    /// Wider than `NodeId` so an out-of-range id gets a message naming its key.
    id: i64,
    /// Parsed here rather than by serde so the error names the node's key. Required by
    /// `udp`; the other fabrics address members by id.
    #[serde(default)]
    addr: Option<String>,
    /// Where the node serves clients (TCP), if it does.
    #[serde(default)]
    client: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    kind: String,
    #[serde(default)]
    require: Vec<Capability>,
    #[serde(default = "default_max_message")]
    max_message: usize,
    #[serde(default = "default_true")]
    fast_path: bool,
    #[serde(default)]
    layers: Option<Vec<LayerKind>>,
    #[serde(default)]
    udp: Option<UdpConfig>,
    #[serde(default)]
    mem: Option<MemConfig>,
    #[serde(default)]
    vortex: Option<VortexConfig>,
    #[serde(default)]
    rdma: Option<RdmaConfig>,
    #[serde(default)]
    ptp: Option<PtpConfig>,
    #[serde(default)]
    reliable: Option<RawTuning>,
}

fn default_max_message() -> usize {
    DEFAULT_MAX_MESSAGE
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTuning {
    window: usize,
    rto_ms: u64,
    max_rto_ms: u64,
    gap_timeout_ms: u64,
}

impl Default for RawTuning {
    fn default() -> Self {
        let d = LayerTuning::default();
        RawTuning {
            window: d.window,
            rto_ms: millis(d.rto),
            max_rto_ms: millis(d.max_rto),
            gap_timeout_ms: millis(d.gap_timeout),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    #[serde(default)]
    key_file: Option<String>,
}

/// Turns a [`RawFile`] into a [`ClusterConfig`], naming `path` in every error.
struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn validate(&self, raw: RawFile) -> Result<ClusterConfig, ConfigError> {
        let RawFile {
            cluster,
            transport,
            security,
            raft,
            service,
        } = raw;
        let mut sections = BTreeMap::new();
        for (name, table) in [("raft", raft), ("service", service)] {
            if let Some(t) = table {
                sections.insert(name.to_string(), t);
            }
        }
        let clients = self.clients(&cluster.nodes)?;

        let kind = self.kind(&transport.kind)?;
        let nodes = self.nodes(&cluster.nodes, kind)?;
        let members: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();

        // Both backend tables are checked when present, so that switching `kind` cannot
        // uncover an error that loading did not report.
        let udp = transport.udp.unwrap_or_default();
        self.udp(&udp)?;
        let mem = transport.mem.unwrap_or_default();
        self.mem(&mem, &members)?;
        let vortex = transport.vortex.unwrap_or_default();
        self.vortex(&vortex)?;
        let rdma = transport.rdma.unwrap_or_default();
        self.rdma(&rdma)?;
        let ptp = transport.ptp.unwrap_or_default();
        self.ptp(&ptp)?;
        if kind == Kind::Rdma && !rdma.is_emulated() {
            self.handshake_addrs(&cluster.nodes, &nodes)?;
        }
        let backend = match kind {
            Kind::Mem => BackendConfig::Mem(mem),
            Kind::Udp => BackendConfig::Udp(udp),
            Kind::Vortex => BackendConfig::Vortex(vortex),
            Kind::Rdma => BackendConfig::Rdma(rdma),
            Kind::Ptp => BackendConfig::Ptp(ptp),
        };

        if transport.max_message == 0 || transport.max_message > MAX_MAX_MESSAGE {
            return Err(self.invalid(
                "transport.max_message",
                format!(
                    "{} is out of range: must be 1..={MAX_MAX_MESSAGE} bytes (64 MiB)",
                    transport.max_message
                ),
            ));
        }

        if let Some(layers) = &transport.layers {
            self.layers(layers)?;
        }
        let tuning = self.tuning(transport.reliable.unwrap_or_default())?;

        let key_file = match security.and_then(|s| s.key_file) {
            Some(file) => Some(self.key_file_path(&file)?),
            None => None,
        };
        let key = match &key_file {
            Some(file) => Some(self.load_key(file)?),
            None => None,
        };
        if key.is_none() {
            self.check_key_not_needed(kind, &transport.require, transport.layers.as_deref())?;
        }

        Ok(ClusterConfig {
            path: self.path.to_path_buf(),
            cluster_id: cluster.id,
            nodes,
            backend,
            require: transport.require,
            max_message: transport.max_message,
            layers: transport.layers,
            fast_path: transport.fast_path,
            tuning,
            key_file,
            key,
            clients,
            sections,
        })
    }

    fn clients(&self, raw: &[RawNode]) -> Result<BTreeMap<NodeId, SocketAddr>, ConfigError> {
        let mut out = BTreeMap::new();
        for (i, node) in raw.iter().enumerate() {
            let Some(text) = &node.client else { continue };
            let addr: SocketAddr = text.trim().parse().map_err(|_| {
                self.invalid(
                    format!("cluster.nodes[{i}].client"),
                    format!(
                        "`{}` is not a socket address; expected host:port with an IP address",
                        text.escape_debug()
                    ),
                )
            })?;
            if let Ok(id) = u32::try_from(node.id) {
                out.insert(NodeId(id), addr);
            }
        }
        Ok(out)
    }

    fn kind(&self, kind: &str) -> Result<Kind, ConfigError> {
        match kind {
            "mem" => Ok(Kind::Mem),
            "udp" => Ok(Kind::Udp),
            "vortex" => Ok(Kind::Vortex),
            "rdma" => Ok(Kind::Rdma),
            "ptp" => Ok(Kind::Ptp),
            k => Err(self.invalid(
                "transport.kind",
                format!(
                    "unknown transport kind `{}`; known kinds: {}",
                    k.escape_debug(),
                    AVAILABLE_KINDS.join(", "),
                ),
            )),
        }
    }

    fn nodes(&self, raw: &[RawNode], kind: Kind) -> Result<Vec<NodeSpec>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid("cluster.nodes", "the cluster needs at least one node"));
        }
        let mut nodes: Vec<NodeSpec> = Vec::with_capacity(raw.len());
        let mut ids: HashMap<NodeId, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, node) in raw.iter().enumerate() {
            let id = u32::try_from(node.id).map(NodeId).map_err(|_| {
                self.invalid(
                    format!("cluster.nodes[{i}].id"),
                    format!("{} is out of range: must be 0..={}", node.id, u32::MAX),
                )
            })?;
            if let Some(first) = ids.insert(id, i) {
                return Err(self.invalid(
                    format!("cluster.nodes[{i}].id"),
                    format!("duplicate node id {id} (also at cluster.nodes[{first}])"),
                ));
            }
            let addr: SocketAddr = match &node.addr {
                Some(text) => text.trim().parse().map_err(|_| {
                    self.invalid(
                        format!("cluster.nodes[{i}].addr"),
                        format!(
                            "`{}` is not a socket address; expected host:port with an IP \
                             address, like \"127.0.0.1:7101\" or \"[::1]:7101\"",
                            text.escape_debug()
                        ),
                    )
                })?,
                None if kind.datagrams() => {
                    return Err(self.invalid(
                        format!("cluster.nodes[{i}].addr"),
                        "missing: udp and ptp members need the address their socket binds to",
                    ))
                }
                None => SocketAddr::from(([127, 0, 0, 1], 0)),
            };
            if let Some(first) = addrs.insert(addr, i) {
                if kind.datagrams() {
                    return Err(self.invalid(
                        format!("cluster.nodes[{i}].addr"),
                        format!(
                            "address {addr} is already used by cluster.nodes[{first}]; \
                             udp members need distinct addresses"
                        ),
                    ));
                }
            }
            nodes.push(NodeSpec { id, addr });
        }
        Ok(nodes)
    }

    fn rdma(&self, r: &RdmaConfig) -> Result<(), ConfigError> {
        if r.device.trim().is_empty() {
            return Err(self.invalid(
                "transport.rdma.device",
                "empty: name a verbs device (see `ibv_devices`) or \"emulated\"",
            ));
        }
        if r.handshake_timeout_ms == 0 {
            return Err(self.invalid(
                "transport.rdma.handshake_timeout_ms",
                "must be positive: how long opening waits for the peers",
            ));
        }
        if r.ring_bytes % 8 != 0 || !(4096..=1 << 30).contains(&r.ring_bytes) {
            return Err(self.invalid(
                "transport.rdma.ring_bytes",
                format!(
                    "{} is not a multiple of 8 between 4096 and 1073741824",
                    r.ring_bytes
                ),
            ));
        }
        Ok(())
    }

    fn ptp(&self, p: &PtpConfig) -> Result<(), ConfigError> {
        if p.clock != "system" && p.clock != "software" && !p.clock.starts_with("/dev/") {
            return Err(self.invalid(
                "transport.ptp.clock",
                format!(
                    "`{}`: use \"system\", \"software\" or the path of a PTP hardware clock (/dev/ptpN)",
                    p.clock.escape_debug()
                ),
            ));
        }
        if p.delta_min_us == 0 || p.delta_min_us > p.delta_max_us || p.delta_max_us > 1_000_000 {
            return Err(self.invalid(
                "transport.ptp.delta_min_us",
                format!(
                    "need 0 < delta_min_us ({}) <= delta_max_us ({}) <= 1000000",
                    p.delta_min_us, p.delta_max_us
                ),
            ));
        }
        if p.sync_interval_ms == 0 {
            return Err(self.invalid("transport.ptp.sync_interval_ms", "must be positive"));
        }
        if p.max_datagram <= HEADER_LEN + ptp::OVERHEAD || p.max_datagram > MAX_UDP_PAYLOAD {
            return Err(self.invalid(
                "transport.ptp.max_datagram",
                format!(
                    "{} is outside {}..={MAX_UDP_PAYLOAD}",
                    p.max_datagram,
                    HEADER_LEN + ptp::OVERHEAD + 1
                ),
            ));
        }
        Ok(())
    }

    /// On a real RDMA device the members' `addr`s are where the out-of-band queue pair
    /// exchange listens: each must be given, with a port, and distinct.
    fn handshake_addrs(&self, raw: &[RawNode], nodes: &[NodeSpec]) -> Result<(), ConfigError> {
        for (i, (r, n)) in raw.iter().zip(nodes).enumerate() {
            let problem = if r.addr.is_none() {
                "missing: rdma members on a real device need the TCP address of their \
                 queue pair handshake"
            } else if n.addr.port() == 0 {
                "port 0: the queue pair handshake needs a fixed port"
            } else if nodes[..i].iter().any(|m| m.addr == n.addr) {
                "already used by another member: handshake addresses must be distinct"
            } else {
                continue;
            };
            return Err(self.invalid(format!("cluster.nodes[{i}].addr"), problem));
        }
        Ok(())
    }

    fn vortex(&self, v: &VortexConfig) -> Result<(), ConfigError> {
        let ok = v
            .fabric
            .strip_prefix("unix:")
            .or_else(|| v.fabric.strip_prefix("local:"))
            .is_some_and(|rest| !rest.is_empty())
            || std::env::var_os("DV_LIB").is_some();
        if !ok {
            return Err(self.invalid(
                "transport.vortex.fabric",
                format!(
                    "`{}` names no fabric: use \"unix:/path/to/switch.sock\" for a switch \
                     process (weft vortex-switch) or \"local:NAME\" for one in this process",
                    v.fabric.escape_debug()
                ),
            ));
        }
        Ok(())
    }

    fn udp(&self, udp: &UdpConfig) -> Result<(), ConfigError> {
        if udp.max_datagram == 0 || udp.max_datagram > MAX_UDP_PAYLOAD {
            return Err(self.invalid(
                "transport.udp.max_datagram",
                format!(
                    "{} is out of range: must be 1..={MAX_UDP_PAYLOAD} bytes \
                     (1472 fits a 1500-byte Ethernet MTU)",
                    udp.max_datagram
                ),
            ));
        }
        Ok(())
    }

    fn mem(&self, mem: &MemConfig, members: &BTreeSet<NodeId>) -> Result<(), ConfigError> {
        for (name, p) in [
            ("drop", mem.drop),
            ("duplicate", mem.duplicate),
            ("reorder", mem.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(self.invalid(
                    format!("transport.mem.{name}"),
                    format!("{p} is not a probability: must be within 0..=1"),
                ));
            }
        }
        if mem.max_frame == 0 {
            return Err(self.invalid("transport.mem.max_frame", "must be at least 1 byte"));
        }
        for (g, group) in mem.partitions.iter().enumerate() {
            for id in group {
                if !members.contains(id) {
                    return Err(self.invalid(
                        "transport.mem.partitions",
                        format!("group {g} names node {id}, which is not in cluster.nodes"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn layers(&self, layers: &[LayerKind]) -> Result<(), ConfigError> {
        let canonical = LayerKind::CANONICAL
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(", ");
        let rank = |l: LayerKind| LayerKind::CANONICAL.iter().position(|c| *c == l);
        for (i, pair) in layers.windows(2).enumerate() {
            let (upper, lower) = (pair[0], pair[1]);
            if upper == lower || layers[..i].contains(&lower) {
                return Err(self.invalid(
                    "transport.layers",
                    format!("layer `{lower}` is listed more than once"),
                ));
            }
            if rank(upper) > rank(lower) {
                return Err(self.invalid(
                    "transport.layers",
                    format!(
                        "`{lower}` must come before `{upper}`: layers are listed top first \
                         and must keep the order {canonical}"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn tuning(&self, raw: RawTuning) -> Result<LayerTuning, ConfigError> {
        if raw.window == 0 || raw.window > MAX_WINDOW {
            return Err(self.invalid(
                "transport.reliable.window",
                format!("{} is out of range: must be 1..={MAX_WINDOW}", raw.window),
            ));
        }
        if raw.rto_ms == 0 {
            return Err(self.invalid(
                "transport.reliable.rto_ms",
                "must be greater than 0 milliseconds",
            ));
        }
        if raw.max_rto_ms < raw.rto_ms {
            return Err(self.invalid(
                "transport.reliable.max_rto_ms",
                format!(
                    "{} ms is less than rto_ms ({} ms); the ceiling must be at least the \
                     first timeout",
                    raw.max_rto_ms, raw.rto_ms
                ),
            ));
        }
        if raw.gap_timeout_ms == 0 {
            return Err(self.invalid(
                "transport.reliable.gap_timeout_ms",
                "must be greater than 0 milliseconds",
            ));
        }
        Ok(LayerTuning {
            window: raw.window,
            rto: Duration::from_millis(raw.rto_ms),
            max_rto: Duration::from_millis(raw.max_rto_ms),
            gap_timeout: Duration::from_millis(raw.gap_timeout_ms),
        })
    }

    fn key_file_path(&self, file: &str) -> Result<PathBuf, ConfigError> {
        if file.trim().is_empty() {
            return Err(self.invalid("security.key_file", "must name a file"));
        }
        let dir = self.path.parent().unwrap_or(Path::new(""));
        Ok(dir.join(file))
    }

    fn load_key(&self, file: &Path) -> Result<ClusterKey, ConfigError> {
        let fail = |why: String| {
            self.invalid(
                "security.key_file",
                format!("key file {}: {why}", file.display()),
            )
        };
        let bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read: {e}")))?;
        let key = decode_hex_key(&bytes).map_err(fail)?;
        let len = key.len();
        ClusterKey::new(key).ok_or_else(|| {
            fail(format!(
                "decodes to {len} bytes; a cluster key needs at least {} bytes ({} hex digits)",
                ClusterKey::MIN_LEN,
                2 * ClusterKey::MIN_LEN
            ))
        })
    }

    /// Without a key, the `auth` layer cannot be built: report that here, on the key that
    /// is missing, rather than when a transport is opened.
    fn check_key_not_needed(
        &self,
        kind: Kind,
        require: &[Capability],
        layers: Option<&[LayerKind]>,
    ) -> Result<(), ConfigError> {
        let why = match layers {
            Some(layers) if layers.contains(&LayerKind::Auth) => {
                "transport.layers includes `auth`, which needs a cluster key"
            }
            // UDP cannot vouch for a sender, so `authenticated_source` means the auth layer.
            None if kind.datagrams() && require.contains(&Capability::AuthenticatedSource) => {
                "transport.require includes `authenticated_source`, which over udp needs the \
                 auth layer and so a cluster key"
            }
            _ => return Ok(()),
        };
        Err(self.invalid(
            "security.key_file",
            format!("{why}; set `key_file` in a [security] table"),
        ))
    }
}

/// The backend kinds this build can open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mem,
    Udp,
    Vortex,
    Rdma,
    Ptp,
}

impl Kind {
    /// Whether members are reached at their `addr` by datagrams (which must then be given
    /// and distinct).
    fn datagrams(self) -> bool {
        matches!(self, Kind::Udp | Kind::Ptp)
    }
}

/// Decodes a key file: ASCII hex digits, whitespace ignored, lines whose first
/// non-blank character is `#` are comments. The message never quotes key material.
fn decode_hex_key(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut digits: Vec<u8> = Vec::with_capacity(text.len());
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        let first = line.iter().position(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|i| line[i] == b'#') {
            continue;
        }
        for (c, b) in line.iter().enumerate() {
            if b.is_ascii_whitespace() {
                continue;
            }
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => {
                    return Err(format!(
                        "line {}, column {}: not a hex digit (expected 0-9, a-f, or a `#` \
                         comment line)",
                        n + 1,
                        c + 1
                    ))
                }
            };
            digits.push(digit);
        }
    }
    let pairs = digits.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(format!(
            "odd number of hex digits ({}); each byte takes two",
            digits.len()
        ));
    }
    Ok(pairs.map(|p| (p[0] << 4) | p[1]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    const UDP: &str = r#"
[cluster]
id = 42
nodes = [
  { id = 1, addr = "127.0.0.1:7101" },
  { id = 2, addr = "127.0.0.1:7102" },
  { id = 3, addr = "127.0.0.1:7103" },
]

[transport]
kind = "udp"
require = ["reliable", "fifo_per_peer", "authenticated_source"]
max_message = 2097152
fast_path = false
layers = ["fragment", "fifo", "reliable", "auth"]

[transport.udp]
max_datagram = 1400

[transport.reliable]
window = 256
rto_ms = 10
max_rto_ms = 500
gap_timeout_ms = 100

[security]
key_file = "cluster.key"
"#;

    const MEM: &str = r#"
[cluster]
id = 7
nodes = [
  { id = 3, addr = "127.0.0.1:1" },
  { id = 1, addr = "127.0.0.1:1" },
  { id = 2, addr = "127.0.0.1:1" },
]

[transport]
kind = "mem"

[transport.mem]
seed = 9
drop = 0.1
duplicate = 0.05
reorder = 0.2
max_delay_us = 300
partitions = [[1, 2], [3]]
"#;

    /// A config and its key file in a fresh directory.
    fn write_dir(config: &str, key: Option<&str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, config).expect("write config");
        if let Some(key) = key {
            std::fs::write(dir.path().join("cluster.key"), key).expect("write key");
        }
        (dir, path)
    }

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(text, Path::new("/nonexistent/dir/bad-cluster.toml"))
    }

    /// Asserts that `result` is `Invalid` on `key`, mentions `needle` and names the file.
    #[track_caller]
    fn assert_invalid(result: Result<ClusterConfig, ConfigError>, key: &str, needle: &str) {
        let err = result.expect_err("config should have been rejected");
        let shown = err.to_string();
        match &err {
            ConfigError::Invalid { key: k, path, .. } => {
                assert_eq!(k, key, "wrong key in: {shown}");
                let file = path
                    .file_name()
                    .and_then(|f| f.to_str())
                    .expect("file name");
                assert!(shown.contains(file), "file name missing from: {shown}");
            }
            other => panic!("expected Invalid on {key}, got {other:?}"),
        }
        assert!(shown.contains(key), "key missing from: {shown}");
        assert!(shown.contains(needle), "`{needle}` missing from: {shown}");
    }

    /// `UDP` with its `[security]` table removed and `auth` taken out of the stack, so no
    /// key file is needed.
    fn udp_without_key() -> String {
        UDP.replace("[security]\nkey_file = \"cluster.key\"\n", "")
            .replace(
                "layers = [\"fragment\", \"fifo\", \"reliable\", \"auth\"]",
                "layers = [\"fragment\", \"fifo\", \"reliable\"]",
            )
    }

    #[test]
    fn udp_file_resolves_per_node() {
        let key_text = format!("# test key\n  {}\n{}  \n", &KEY_HEX[..32], &KEY_HEX[32..]);
        let (dir, path) = write_dir(UDP, Some(&key_text));
        let cfg = ClusterConfig::load(&path).expect("valid config");
        assert_eq!(cfg.path, path);
        assert_eq!(cfg.cluster_id, 42);
        assert_eq!(cfg.node_ids(), vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(
            cfg.key_file.as_deref(),
            Some(&*dir.path().join("cluster.key"))
        );

        let expected_key: Vec<u8> = (0u8..32).collect();
        for id in 1..=3 {
            let t = cfg.transport_for(NodeId(id)).expect("member");
            assert_eq!(t.cluster_id, 42);
            assert_eq!(t.local, NodeId(id));
            assert_eq!(t.nodes.len(), 3);
            assert_eq!(
                t.nodes[2],
                NodeSpec {
                    id: NodeId(3),
                    addr: "127.0.0.1:7103".parse().unwrap()
                }
            );
            let peers: Vec<NodeId> = (1..=3).filter(|p| *p != id).map(NodeId).collect();
            assert_eq!(t.peer_ids(), peers);
            assert_eq!(
                t.backend,
                BackendConfig::Udp(UdpConfig {
                    max_datagram: 1400,
                    ..UdpConfig::default()
                })
            );
            assert_eq!(
                t.require,
                vec![
                    Capability::Reliable,
                    Capability::FifoPerPeer,
                    Capability::AuthenticatedSource
                ]
            );
            assert_eq!(t.max_message, 2 << 20);
            assert!(!t.fast_path);
            assert_eq!(
                t.layers,
                Some(vec![
                    LayerKind::Fragment,
                    LayerKind::Fifo,
                    LayerKind::Reliable,
                    LayerKind::Auth
                ])
            );
            assert_eq!(
                t.tuning,
                LayerTuning {
                    window: 256,
                    rto: Duration::from_millis(10),
                    max_rto: Duration::from_millis(500),
                    gap_timeout: Duration::from_millis(100),
                }
            );
            assert_eq!(t.key.as_ref().map(|k| k.bytes()), Some(&expected_key[..]));
        }
    }

    #[test]
    fn mem_file_and_defaults() {
        let cfg = parse(MEM).expect("valid config");
        assert_eq!(cfg.node_ids(), vec![NodeId(1), NodeId(2), NodeId(3)]);
        // File order is kept in `nodes`.
        assert_eq!(cfg.nodes[0].id, NodeId(3));
        let t = cfg.transport_for(NodeId(2)).expect("member");
        assert_eq!(t.peer_ids(), vec![NodeId(1), NodeId(3)]);
        assert_eq!(
            t.backend,
            BackendConfig::Mem(MemConfig {
                seed: 9,
                drop: 0.1,
                duplicate: 0.05,
                reorder: 0.2,
                max_delay_us: 300,
                partitions: vec![vec![NodeId(1), NodeId(2)], vec![NodeId(3)]],
                ..MemConfig::default()
            })
        );
        // Defaults of everything not written.
        assert!(t.require.is_empty());
        assert_eq!(t.max_message, 1 << 20);
        assert!(t.fast_path);
        assert_eq!(t.layers, None);
        assert_eq!(t.tuning, LayerTuning::default());
        assert!(t.key.is_none());
        assert!(cfg.key_file.is_none());
    }

    #[test]
    fn absent_backend_tables_take_defaults() {
        let cfg = parse(
            "[cluster]\nid = 1\nnodes = [{ id = 5, addr = \"[::1]:9000\" }]\n\
             [transport]\nkind = \"udp\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.backend, BackendConfig::Udp(UdpConfig::default()));
        let cfg = parse(
            "[cluster]\nid = 1\nnodes = [{ id = 5, addr = \"[::1]:9000\" }]\n\
             [transport]\nkind = \"mem\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.backend, BackendConfig::Mem(MemConfig::default()));
        assert_eq!(cfg.transport_for(NodeId(5)).unwrap().peer_ids(), vec![]);
    }

    #[test]
    fn non_member_is_rejected() {
        let cfg = parse(MEM).expect("valid");
        let err = cfg.transport_for(NodeId(9)).expect_err("not a member");
        let shown = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "cluster.nodes"),
            "{shown}"
        );
        assert!(shown.contains("bad-cluster.toml"), "{shown}");
        assert!(shown.contains("node 9"), "{shown}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = ClusterConfig::load("/nonexistent/weft/missing.toml").expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("missing.toml"));
    }

    #[test]
    fn typos_and_schema_errors_are_parse_errors() {
        for (text, needle) in [
            (MEM.replace("kind = \"mem\"", "knid = \"mem\""), "knid"),
            (MEM.replace("seed = 9", "sed = 9"), "sed"),
            (MEM.replace("id = 7", "id = \"seven\""), "line"),
            (MEM.replace("id = 7", "id = -7"), "line"),
            (
                MEM.replace(
                    "[transport]\nkind",
                    "[transport]\nrequire = [\"relable\"]\nkind",
                ),
                "relable",
            ),
            (
                MEM.replace("[transport]\nkind", "[transport]\nlayers = [\"zip\"]\nkind"),
                "zip",
            ),
            (
                MEM.replace("[cluster]\nid = 7\n", "[cluster]\n"),
                "missing field `id`",
            ),
            (MEM.replace("drop = 0.1", "drop = 0.1\nextra = 1"), "extra"),
            (format!("{MEM}\n[securty]\nkey_file = \"k\"\n"), "securty"),
            ("[cluster\nid = 1".to_string(), "line"),
        ] {
            let err = parse(&text).expect_err(needle);
            let shown = err.to_string();
            assert!(matches!(err, ConfigError::Parse { .. }), "{shown}");
            assert!(shown.contains("bad-cluster.toml"), "{shown}");
            assert!(shown.contains(needle), "`{needle}` missing from: {shown}");
        }
    }

    #[test]
    fn node_errors() {
        let no_key = udp_without_key();
        assert_invalid(
            parse(&no_key.replace("\"127.0.0.1:7103\"", "\"localhost:7103\"")),
            "cluster.nodes[2].addr",
            "host:port",
        );
        assert_invalid(
            parse(&no_key.replace("\"127.0.0.1:7102\"", "\"127.0.0.1\"")),
            "cluster.nodes[1].addr",
            "IP",
        );
        assert_invalid(
            parse(&no_key.replace("{ id = 2,", "{ id = 1,")),
            "cluster.nodes[1].id",
            "duplicate node id 1",
        );
        assert_invalid(
            parse(&no_key.replace("{ id = 3,", "{ id = -3,")),
            "cluster.nodes[2].id",
            "out of range",
        );
        assert_invalid(
            parse(&no_key.replace("{ id = 3,", "{ id = 4294967296,")),
            "cluster.nodes[2].id",
            "out of range",
        );
        assert_invalid(
            parse(&no_key.replace("127.0.0.1:7103", "127.0.0.1:7101")),
            "cluster.nodes[2].addr",
            "cluster.nodes[0]",
        );
        // The mem backend does not use addresses, so duplicates are fine there.
        parse(&MEM.replace("127.0.0.1:1", "127.0.0.1:5")).expect("mem allows shared addrs");
        let empty = "[cluster]\nid = 1\nnodes = []\n[transport]\nkind = \"mem\"\n";
        assert_invalid(parse(empty), "cluster.nodes", "at least one");
    }

    #[test]
    fn transport_errors() {
        let no_key = udp_without_key();
        let ptp = no_key.replace("kind = \"udp\"", "kind = \"ptp\"");
        let cfg = parse(&ptp).expect("ptp loads with its defaults");
        assert!(matches!(
            cfg.transport_for(NodeId(1)).unwrap().backend,
            BackendConfig::Ptp(_)
        ));
        for (table, key) in [
            ("clock = \"gps\"", "transport.ptp.clock"),
            ("delta_min_us = 9000", "transport.ptp.delta_min_us"),
            ("sync_interval_ms = 0", "transport.ptp.sync_interval_ms"),
            ("max_datagram = 20", "transport.ptp.max_datagram"),
        ] {
            assert_invalid(
                parse(&format!("{ptp}\n[transport.ptp]\n{table}\n")),
                key,
                "",
            );
        }
        assert_invalid(
            parse(&no_key.replace("kind = \"udp\"", "kind = \"tcp\"")),
            "transport.kind",
            "known kinds: mem, udp",
        );
        for bad in ["0", "67108865"] {
            assert_invalid(
                parse(&no_key.replace("max_message = 2097152", &format!("max_message = {bad}"))),
                "transport.max_message",
                "1..=67108864",
            );
        }
        parse(&no_key.replace("max_message = 2097152", "max_message = 67108864"))
            .expect("64 MiB is the limit, inclusive");
        assert_invalid(
            parse(&no_key.replace("max_datagram = 1400", "max_datagram = 70000")),
            "transport.udp.max_datagram",
            "out of range",
        );
    }

    #[test]
    fn layer_order_errors() {
        let no_key = udp_without_key();
        let with = |layers: &str| {
            no_key.replace(
                "layers = [\"fragment\", \"fifo\", \"reliable\"]",
                &format!("layers = {layers}"),
            )
        };
        assert_invalid(
            parse(&with("[\"reliable\", \"fifo\"]")),
            "transport.layers",
            "`fifo` must come before `reliable`",
        );
        assert_invalid(
            parse(&with("[\"fifo\", \"fifo\"]")),
            "transport.layers",
            "more than once",
        );
        assert_invalid(
            parse(&with("[\"fifo\", \"reliable\", \"fifo\"]")),
            "transport.layers",
            "fifo",
        );
        for ok in ["[]", "[\"reliable\"]", "[\"fragment\", \"reliable\"]"] {
            let cfg = parse(&with(ok)).expect(ok);
            assert!(cfg.layers.is_some());
        }
    }

    #[test]
    fn mem_errors() {
        for field in ["drop", "duplicate", "reorder"] {
            for bad in ["1.5", "-0.1", "nan", "inf"] {
                let text = MEM
                    .replace("drop = 0.1\nduplicate = 0.05\nreorder = 0.2\n", "")
                    .replace("seed = 9", &format!("seed = 9\n{field} = {bad}"));
                assert_invalid(
                    parse(&text),
                    &format!("transport.mem.{field}"),
                    "within 0..=1",
                );
            }
        }
        assert_invalid(
            parse(&MEM.replace("[[1, 2], [3]]", "[[1, 2], [3, 4]]")),
            "transport.mem.partitions",
            "node 4",
        );
        assert_invalid(
            parse(&MEM.replace("seed = 9", "seed = 9\nmax_frame = 0")),
            "transport.mem.max_frame",
            "at least",
        );
        // The mem table is checked even when another kind is selected.
        let udp_with_mem = format!("{}\n[transport.mem]\ndrop = 2.0\n", udp_without_key());
        assert_invalid(parse(&udp_with_mem), "transport.mem.drop", "0..=1");
    }

    #[test]
    fn tuning_errors() {
        let with = |table: &str| format!("{MEM}\n[transport.reliable]\n{table}\n");
        for bad in ["0", "65537"] {
            assert_invalid(
                parse(&with(&format!("window = {bad}"))),
                "transport.reliable.window",
                "1..=65536",
            );
        }
        parse(&with("window = 65536")).expect("inclusive upper bound");
        assert_invalid(
            parse(&with("rto_ms = 0")),
            "transport.reliable.rto_ms",
            "greater than 0",
        );
        assert_invalid(
            parse(&with("rto_ms = 50\nmax_rto_ms = 40")),
            "transport.reliable.max_rto_ms",
            "less than rto_ms",
        );
        // A lone rto above the default ceiling is caught too.
        assert_invalid(
            parse(&with("rto_ms = 5000")),
            "transport.reliable.max_rto_ms",
            "less than rto_ms",
        );
        assert_invalid(
            parse(&with("gap_timeout_ms = 0")),
            "transport.reliable.gap_timeout_ms",
            "greater than 0",
        );
        let cfg = parse(&with("window = 8")).expect("partial table");
        assert_eq!(
            cfg.tuning,
            LayerTuning {
                window: 8,
                ..LayerTuning::default()
            }
        );
    }

    #[test]
    fn key_file_errors() {
        let cases: [(Option<&str>, &str); 5] = [
            (None, "cannot read"),
            (
                Some("00112233445566778899aabbccddee"),
                "decodes to 15 bytes",
            ),
            (Some("zz"), "not a hex digit"),
            (Some(&KEY_HEX[1..]), "odd number of hex digits"),
            (Some("# only a comment\n"), "decodes to 0 bytes"),
        ];
        for (key, needle) in cases {
            let (dir, path) = write_dir(UDP, key);
            let result = ClusterConfig::load(&path);
            assert_invalid(result, "security.key_file", needle);
            let shown = ClusterConfig::load(&path).unwrap_err().to_string();
            let key_path = dir.path().join("cluster.key");
            assert!(
                shown.contains(&key_path.display().to_string()),
                "key file path missing from: {shown}"
            );
        }
        // A key file is required when the stack has `auth`, or udp must authenticate.
        let (_dir, path) = write_dir(&UDP.replace("key_file = \"cluster.key\"", ""), None);
        assert_invalid(ClusterConfig::load(&path), "security.key_file", "auth");
        let text =
            udp_without_key().replace("\nlayers = [\"fragment\", \"fifo\", \"reliable\"]", "");
        assert_invalid(parse(&text), "security.key_file", "authenticated_source");
        assert_invalid(
            parse(&UDP.replace("key_file = \"cluster.key\"", "key_file = \"  \"")),
            "security.key_file",
            "must name a file",
        );
    }

    #[test]
    fn key_file_path_is_relative_to_config_dir() {
        let (dir, _) = write_dir("", None);
        std::fs::create_dir(dir.path().join("conf")).unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(
            dir.path().join("keys").join("k.hex"),
            KEY_HEX.to_uppercase(),
        )
        .unwrap();
        let path = dir.path().join("conf").join("c.toml");
        std::fs::write(
            &path,
            UDP.replace("key_file = \"cluster.key\"", "key_file = \"../keys/k.hex\""),
        )
        .unwrap();
        let cfg = ClusterConfig::load(&path).expect("key found relative to the config");
        assert_eq!(cfg.key.unwrap().bytes().len(), 32);
        // An absolute key path is used as it is.
        let abs = dir.path().join("keys").join("k.hex");
        let text = UDP.replace(
            "key_file = \"cluster.key\"",
            &format!("key_file = {:?}", abs.display().to_string()),
        );
        let cfg = ClusterConfig::parse(&text, Path::new("/elsewhere/c.toml")).expect("absolute");
        assert!(cfg.key.is_some());
    }

    #[test]
    fn key_decoding() {
        assert_eq!(decode_hex_key(b"").unwrap(), Vec::<u8>::new());
        assert_eq!(
            decode_hex_key(b"  # c\r\nDe aD\r\n\t# 00\nbeef\n").unwrap(),
            vec![0xde, 0xad, 0xbe, 0xef]
        );
        // A `#` after digits on the same line is not a comment.
        assert!(decode_hex_key(b"dead # c").is_err());
        assert!(decode_hex_key("é0".as_bytes()).is_err());
    }

    #[test]
    fn client_addresses_and_upper_sections() {
        #[derive(serde::Deserialize, Default, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Raft {
            tick_ms: u64,
        }
        let cfg = parse(
            r#"
[cluster]
id = 1
nodes = [{ id = 1, addr = "127.0.0.1:7101", client = "127.0.0.1:7201" }]
[transport]
kind = "mem"
[raft]
tick_ms = 15
"#,
        )
        .unwrap();
        assert_eq!(cfg.clients[&NodeId(1)], "127.0.0.1:7201".parse().unwrap());
        assert_eq!(cfg.section::<Raft>("raft").unwrap(), Raft { tick_ms: 15 });
        assert_eq!(cfg.section::<Raft>("service").unwrap(), Raft::default());
        let bad = parse(
            r#"
[cluster]
id = 1
nodes = [{ id = 1, addr = "127.0.0.1:7101", client = "nowhere" }]
[transport]
kind = "mem"
"#,
        );
        assert_invalid(bad, "cluster.nodes[0].client", "not a socket address");
        let typo = parse(
            r#"
[cluster]
id = 1
nodes = [{ id = 1, addr = "127.0.0.1:7101" }]
[transport]
kind = "mem"
[raft]
tick_sm = 15
"#,
        )
        .unwrap();
        let err = typo.section::<Raft>("raft").unwrap_err().to_string();
        assert!(err.contains("raft") && err.contains("tick_sm"), "{err}");
    }

    /// A shipped example, located at run time: a path baked in at compile time would point
    /// into whichever checkout first built this test in a shared target directory.
    fn example(name: &str) -> PathBuf {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        dir.join("..").join("examples").join(name)
    }

    #[test]
    fn shipped_examples_load() {
        let udp =
            ClusterConfig::load(example("cluster-udp.toml")).expect("examples/cluster-udp.toml");
        assert_eq!(udp.node_ids(), vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(udp.backend.kind(), "udp");
        assert!(udp.key.is_some());
        for cap in [
            Capability::Reliable,
            Capability::FifoPerPeer,
            Capability::AuthenticatedSource,
        ] {
            assert!(udp.require.contains(&cap), "{cap}");
        }
        for id in udp.node_ids() {
            udp.transport_for(id).expect("member");
        }

        let mem =
            ClusterConfig::load(example("cluster-mem.toml")).expect("examples/cluster-mem.toml");
        assert_eq!(mem.node_ids().len(), 3);
        assert_eq!(mem.backend.kind(), "mem");
        for id in mem.node_ids() {
            mem.transport_for(id).expect("member");
        }
    }

    /// Every prefix of a valid file, cut at any character, loads or fails without panicking.
    #[test]
    fn truncated_files_never_panic() {
        for text in [UDP, MEM] {
            for (i, _) in text.char_indices() {
                let _ = parse(&text[..i]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random text made of TOML's punctuation and this schema's words never panics.
        #[test]
        fn random_toml_never_panics(text in "(\\[|\\]|\\{|\\}|=|,|\"|\\.|\n| |#|-|[0-9]{1,12}|cluster|nodes|id|addr|transport|kind|udp|mem|require|layers|reliable|fifo|auth|window|rto_ms|drop|partitions|security|key_file|127\\.0\\.0\\.1:7101|nan|inf|true){0,80}") {
            let _ = parse(&text);
        }

        /// A valid file with bytes overwritten or cut never panics.
        #[test]
        fn mutated_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..6),
            cut in any::<prop::sample::Index>(),
            mem in any::<bool>(),
        ) {
            let base = if mem { MEM } else { UDP };
            let mut chars: Vec<char> = base.chars().collect();
            for (at, c) in edits {
                let i = at.index(chars.len());
                chars[i] = c;
            }
            let keep = cut.index(chars.len() + 1);
            let text: String = chars[..keep].iter().collect();
            let _ = parse(&text);
        }

        /// Arbitrary key file bytes decode or fail without panicking.
        #[test]
        fn key_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_hex_key(&bytes);
        }
    }
}
