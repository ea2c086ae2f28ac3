//! Random, truncated and bit-flipped frames fed to every layer stack, with and without the
//! fast path: the stack never panics, and with `auth` at the bottom nothing forged is
//! delivered and every rejected frame is counted.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use weft_transport::layer::{Output, Stack, StackBuilder};
use weft_transport::{Capabilities, ClusterKey, Counters, Dest, LayerKind, NodeId};

fn stack(local: u32, layers: &[LayerKind], fast: bool, counters: Arc<Counters>) -> Stack {
    let native = Capabilities {
        max_message: 512,
        ..Capabilities::default()
    };
    StackBuilder::new(5, NodeId(local), &[NodeId(1), NodeId(2)], layers, native)
        .max_message(if layers.contains(&LayerKind::Fragment) {
            4096
        } else {
            256
        })
        .key(ClusterKey::new(vec![9; 32]))
        .fast_path(fast)
        .incarnation(u64::from(local))
        .build(counters)
        .unwrap()
}

fn all_stacks() -> Vec<Vec<LayerKind>> {
    use LayerKind::*;
    vec![
        vec![Fragment],
        vec![Fifo],
        vec![Reliable],
        vec![Auth],
        vec![Fifo, Reliable],
        vec![Fragment, Fifo, Reliable],
        vec![Fragment, Fifo, Reliable, Auth],
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_any_stack(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..20),
        tag_first in any::<bool>(),
    ) {
        for layers in all_stacks() {
            for fast in [false, true] {
                let c = Arc::new(Counters::default());
                let mut s = stack(2, &layers, fast, Arc::clone(&c));
                let mut out = Output::default();
                for f in &frames {
                    let mut f = f.clone();
                    if tag_first && !f.is_empty() {
                        f[0] = 0xFA; // steer into the fast-path decoder
                    }
                    s.receive(NodeId(1), Bytes::from(f), Instant::now(), &mut out);
                    s.tick(Instant::now(), &mut out);
                    s.flush(Instant::now(), &mut out);
                }
                if layers.contains(&LayerKind::Auth) {
                    prop_assert!(out.deliver.is_empty());
                    let st = c.snapshot();
                    prop_assert_eq!(st.rejected_bad_mac + st.rejected_malformed, frames.len() as u64);
                }
            }
        }
    }

    #[test]
    fn tampered_frames_are_rejected_by_auth(flip_at in 0usize..200, bit in 0u8..8, fast in any::<bool>()) {
        use LayerKind::*;
        let layers = [Fragment, Fifo, Reliable, Auth];
        let c = Arc::new(Counters::default());
        let mut a = stack(1, &layers, fast, Arc::new(Counters::default()));
        let mut b = stack(2, &layers, fast, Arc::clone(&c));
        let mut sent = Output::default();
        a.send(Dest::Node(NodeId(2)), Bytes::from(vec![7u8; 100]), Instant::now(), &mut sent).unwrap();
        let (_, frame) = sent.wire.pop().unwrap();
        let mut bad = frame.to_vec();
        let i = flip_at % bad.len();
        bad[i] ^= 1 << bit;
        let mut out = Output::default();
        b.receive(NodeId(1), Bytes::from(bad), Instant::now(), &mut out);
        prop_assert!(out.deliver.is_empty());
        b.receive(NodeId(1), frame, Instant::now(), &mut out);
        prop_assert_eq!(out.deliver.len(), 1, "the genuine frame still gets through");
    }
}
