//! [`open`]: from a per-node config to a running transport, libfabric-style. The backend
//! declares what its fabric guarantees; layers are stacked for what the caller requires
//! and the fabric lacks; a requirement nothing can meet is an error naming it.

use std::sync::Arc;

use crate::backend::rdma::{device, verbs, EmulatedFabric, RdmaTransport, SleepWait};
use crate::backend::{mem::MemFabric, ptp::PtpTransport, udp, vortex::VortexTransport};
use crate::layer::{LayeredTransport, StackBuilder};
use crate::{
    BackendConfig, Capabilities, Capability, Counters, LayerKind, OpenError, Transport,
    TransportConfig,
};

/// Opens the transport `cfg` describes: the backend, plus the layers its missing
/// capabilities call for (or the explicit `cfg.layers`).
pub fn open(cfg: &TransportConfig) -> Result<Box<dyn Transport>, OpenError> {
    if !cfg.nodes.iter().any(|n| n.id == cfg.local) {
        return Err(OpenError::NotAMember(cfg.local));
    }
    let members: Vec<_> = cfg.nodes.iter().map(|n| n.id).collect();
    let backend: Box<dyn Transport> = match &cfg.backend {
        BackendConfig::Mem(m) => Box::new(MemFabric::shared(cfg.cluster_id, m).endpoint(
            cfg.local,
            &members,
            Arc::new(Counters::default()),
        )?),
        BackendConfig::Udp(u) => Box::new(udp::UdpTransport::open(
            cfg,
            u,
            Arc::new(Counters::default()),
        )?),
        BackendConfig::Vortex(v) => Box::new(VortexTransport::open(
            cfg,
            v,
            Arc::new(Counters::default()),
        )?),
        BackendConfig::Ptp(p) => {
            Box::new(PtpTransport::open(cfg, p, Arc::new(Counters::default()))?)
        }
        BackendConfig::Rdma(r) if r.is_emulated() => {
            let fabric = EmulatedFabric::shared(cfg.cluster_id);
            let conns = fabric.connect(cfg.local, &cfg.peer_ids(), r.ring_bytes)?;
            let counters = Arc::new(Counters::default());
            let t = RdmaTransport::new(
                cfg.local,
                conns,
                counters,
                r.completion,
                Box::new(SleepWait),
            )?;
            Box::new(t.holding(fabric))
        }
        BackendConfig::Rdma(r) => {
            let fail = |reason| OpenError::Fabric {
                fabric: format!("rdma device {}", r.device),
                reason,
            };
            device::find(&r.device).map_err(fail)?;
            let addrs = cfg.nodes.iter().map(|n| (n.id, n.addr)).collect();
            let (conns, waiter) =
                verbs::connect_all(cfg.cluster_id, cfg.local, &addrs, r).map_err(fail)?;
            let counters = Arc::new(Counters::default());
            Box::new(RdmaTransport::new(
                cfg.local,
                conns,
                counters,
                r.completion,
                Box::new(waiter),
            )?)
        }
    };
    let layers = plan_layers(cfg, backend.capabilities())?;
    tracing::info!(
        node = %cfg.local,
        backend = cfg.backend.kind(),
        native = %backend.capabilities(),
        layers = ?layers,
        "opening transport"
    );
    if layers.is_empty() {
        return Ok(backend);
    }
    let stack = StackBuilder::new(
        cfg.cluster_id,
        cfg.local,
        &members,
        &layers,
        backend.capabilities().clone(),
    )
    .max_message(cfg.max_message)
    .tuning(cfg.tuning.clone())
    .key(cfg.key.clone())
    .fast_path(cfg.fast_path)
    .build(Arc::new(Counters::default()))?;
    Ok(Box::new(LayeredTransport::new(backend, stack)?))
}

/// The layers `cfg` needs over a fabric with `native` capabilities, top first: the
/// explicit list if one is configured, otherwise one layer per required capability the
/// fabric lacks, plus `fragment` when messages may exceed a frame.
pub fn plan_layers(
    cfg: &TransportConfig,
    native: &Capabilities,
) -> Result<Vec<LayerKind>, OpenError> {
    if let Some(explicit) = &cfg.layers {
        return Ok(explicit.clone());
    }
    let mut layers = Vec::new();
    for &cap in &cfg.require {
        if native.has(cap) {
            continue;
        }
        let layer = match cap {
            Capability::Reliable => LayerKind::Reliable,
            Capability::FifoPerPeer => LayerKind::Fifo,
            Capability::AuthenticatedSource => {
                if cfg.key.is_none() {
                    return Err(OpenError::Invalid(format!(
                        "`authenticated_source` is required and `{}` lacks it: the auth layer needs a cluster key ([security] key_file)",
                        cfg.backend.kind()
                    )));
                }
                LayerKind::Auth
            }
            Capability::TotalOrder | Capability::Barrier | Capability::SynchronizedClock => {
                return Err(OpenError::Unsatisfiable {
                    backend: cfg.backend.kind(),
                    capability: cap,
                })
            }
        };
        if !layers.contains(&layer) {
            layers.push(layer);
        }
    }
    let headers: usize = layers.iter().map(|l| l.overhead()).sum();
    if cfg.max_message > native.max_message.saturating_sub(headers) {
        layers.push(LayerKind::Fragment);
    }
    layers.sort_by_key(|k| LayerKind::CANONICAL.iter().position(|c| c == k));
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterKey, LayerTuning, MemConfig, NodeId, NodeSpec, UdpConfig};

    fn cfg(
        backend: BackendConfig,
        require: Vec<Capability>,
        max_message: usize,
    ) -> TransportConfig {
        TransportConfig {
            cluster_id: 1,
            local: NodeId(1),
            nodes: (1..=3)
                .map(|i| NodeSpec {
                    id: NodeId(i),
                    addr: ([127, 0, 0, 1], 0).into(),
                })
                .collect(),
            backend,
            require,
            max_message,
            layers: None,
            fast_path: true,
            tuning: LayerTuning::default(),
            key: None,
        }
    }

    fn udp_native() -> Capabilities {
        Capabilities {
            max_message: 1456,
            ..Capabilities::default()
        }
    }

    #[test]
    fn a_layer_for_each_missing_capability_in_canonical_order() {
        let mut c = cfg(
            BackendConfig::Udp(UdpConfig::default()),
            vec![
                Capability::AuthenticatedSource,
                Capability::Reliable,
                Capability::FifoPerPeer,
            ],
            1 << 20,
        );
        c.key = ClusterKey::new(vec![1; 16]);
        let layers = plan_layers(&c, &udp_native()).unwrap();
        use LayerKind::*;
        assert_eq!(layers, vec![Fragment, Fifo, Reliable, Auth]);
        c.max_message = 1000;
        assert_eq!(
            plan_layers(&c, &udp_native()).unwrap(),
            vec![Fifo, Reliable, Auth]
        );
    }

    #[test]
    fn native_capabilities_need_no_layer() {
        let c = cfg(
            BackendConfig::Mem(MemConfig::default()),
            vec![Capability::Reliable, Capability::AuthenticatedSource],
            1000,
        );
        let t = open(&c).unwrap();
        assert!(t.capabilities().reliable && t.capabilities().authenticated_source);
        assert!(plan_layers(&c, t.capabilities()).unwrap().is_empty());
    }

    #[test]
    fn unlayerable_capabilities_and_missing_keys_are_named() {
        let c = cfg(
            BackendConfig::Udp(UdpConfig::default()),
            vec![Capability::TotalOrder],
            100,
        );
        let e = plan_layers(&c, &udp_native()).unwrap_err();
        assert!(matches!(
            e,
            OpenError::Unsatisfiable {
                capability: Capability::TotalOrder,
                backend: "udp"
            }
        ));
        assert!(e.to_string().contains("total_order"), "{e}");
        let c = cfg(
            BackendConfig::Udp(UdpConfig::default()),
            vec![Capability::AuthenticatedSource],
            100,
        );
        let e = plan_layers(&c, &udp_native()).unwrap_err();
        assert!(e.to_string().contains("key_file"), "{e}");
    }

    #[test]
    fn a_stranger_cannot_open() {
        let mut c = cfg(BackendConfig::Mem(MemConfig::default()), vec![], 100);
        c.local = NodeId(9);
        assert!(matches!(open(&c), Err(OpenError::NotAMember(NodeId(9)))));
    }

    #[test]
    fn explicit_layers_out_of_order_are_refused() {
        let mut c = cfg(BackendConfig::Mem(MemConfig::default()), vec![], 100);
        c.layers = Some(vec![LayerKind::Reliable, LayerKind::Fifo]);
        let e = open(&c).err().expect("refused");
        assert!(e.to_string().contains("order"), "{e}");
    }
}
