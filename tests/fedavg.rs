//! Federated averaging on weft: the aggregator killed mid-round at the process
//! level, and submissions the aggregator must refuse. Each test is bounded (the process
//! runs are killed after 90 s; together they take a few seconds in a debug build).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use weft::fedavg::model::{fedavg, Architecture};
use weft::fedavg::record::{encode, Keys, Update, UpdateRecord};
use weft::fedavg::round::{Inbox, Refusal};
use weft::fedavg::seal::{seal, AggregatorKey};

/// Rounds of the process-level runs.
const ROUNDS: u64 = 5;
/// How far the crash run's accuracy may fall from the crash-free run's, per round: the
/// run replays exactly from its seed, so a lost or doubly counted update would show as a
/// different model, while a correct recovery leaves nothing to differ.
const MARGIN: f64 = 0.02;

/// Runs `weft fedavg ARGS --report FILE` with a hard time limit; its stdout and report.
fn fedavg_run(dir: &Path, name: &str, args: &[&str]) -> (String, Value) {
    let report = dir.join(format!("{name}.json"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("fedavg")
        .args(args)
        .args(["--timeout-s", "60", "--report"])
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft runs");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weft fedavg {args:?} still running after 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weft fedavg {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).expect("the report is written");
    (stdout, serde_json::from_str(&text).unwrap())
}

/// Checks that every round of `report` averaged one update of each node, weighted by
/// that node's shard size; returns the per-round accuracies.
fn every_update_once(report: &Value) -> Vec<f64> {
    let shards: Vec<u64> = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len() as u64, ROUNDS);
    rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["round"].as_u64(), Some(i as u64 + 1));
            let counted: Vec<(u64, u64)> = r["contributors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["node"].as_u64().unwrap(), c["samples"].as_u64().unwrap()))
                .collect();
            let want: Vec<(u64, u64)> = (1..).zip(shards.iter().copied()).collect();
            assert_eq!(counted, want, "round {}", i + 1);
            r["accuracy"].as_f64().unwrap()
        })
        .collect()
}

#[test]
fn aggregator_killed_mid_round_loses_and_double_counts_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = ROUNDS.to_string();
    let (_, calm) = fedavg_run(dir.path(), "calm", &["--rounds", &rounds]);
    let (stdout, crashed) = fedavg_run(
        dir.path(),
        "crashed",
        &["--rounds", &rounds, "--crash-round", "3"],
    );
    assert!(stdout.contains("killing the aggregator"), "{stdout}");
    let crash = &crashed["crash"];
    let (round, victim) = (
        crash["round"].as_u64().expect("a crash happened"),
        crash["node"].as_u64().unwrap(),
    );
    assert!((3..=ROUNDS).contains(&round), "{crash}");
    assert!(
        crash["updates_in"].as_u64().unwrap() >= 1,
        "mid-round: {crash}"
    );
    // The next leader finished the round from the log.
    let finisher = &crashed["rounds"][round as usize - 1];
    assert_ne!(finisher["aggregator"].as_u64(), Some(victim), "{finisher}");
    // Whatever was refused on the way was refused for its stale key, nothing else.
    for r in crashed["rounds"].as_array().unwrap() {
        for rej in r["rejected"].as_array().unwrap() {
            let reason = rej["reason"].as_str().unwrap();
            assert!(
                reason.contains("encrypted for an old aggregator"),
                "{reason}"
            );
        }
    }
    let calm_acc = every_update_once(&calm);
    let crashed_acc = every_update_once(&crashed);
    for (r, (a, b)) in calm_acc.iter().zip(&crashed_acc).enumerate() {
        assert!(
            (a - b).abs() <= MARGIN,
            "round {}: {b} after the crash, {a} without",
            r + 1
        );
    }
    // It learned: the digits are far above chance (10 %) after a few rounds.
    assert!(crashed_acc[ROUNDS as usize - 1] > 0.85, "{crashed_acc:?}");
    // Leadership rotated: more than one node aggregated in the crash-free run.
    let aggregators: std::collections::BTreeSet<u64> = calm["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["aggregator"].as_u64().unwrap())
        .collect();
    assert!(aggregators.len() >= 2, "{aggregators:?}");
}

/// Log lines written while `f` runs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink(Arc::new(Mutex::new(Vec::new())));
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn updates_for_an_old_aggregator_or_tampered_are_rejected_and_not_averaged() {
    let keys = Keys::new("t");
    let arch = Architecture { hidden: 4 };
    let n = arch.param_count();
    let round = 3;
    let update = |node: u32, samples: u64, value: f32| Update {
        round,
        node,
        samples,
        params: vec![value; n],
    };
    let honest = [update(1, 10, 1.0), update(2, 20, 2.0), update(3, 30, 4.0)];
    let sealed_for = |key: &[u8; 32], u: &Update| -> Bytes {
        let aad = keys.update(round, u.node);
        let sealed = seal(key, &encode("update", u).unwrap(), aad.as_bytes()).unwrap();
        let rec = UpdateRecord {
            round,
            node: u.node,
            sealed,
        };
        encode("update record", &rec).unwrap()
    };
    let old = AggregatorKey::generate();
    let mut inbox = Inbox::new(keys.clone(), round, AggregatorKey::generate(), n);
    let current = inbox.public();

    let (_, log) = logged(|| {
        assert!(matches!(
            inbox.offer(1, &sealed_for(&current, &honest[0])),
            Ok(true)
        ));
        // Node 2 sealed for the aggregator that crashed.
        assert!(matches!(
            inbox.offer(2, &sealed_for(&old.public(), &honest[1])),
            Err(Refusal::StaleKey(_))
        ));
        // Node 3's ciphertext has one flipped bit.
        let mut rec: UpdateRecord =
            weft::fedavg::record::decode("r", &sealed_for(&current, &honest[2])).unwrap();
        let mut ct = rec.sealed.ciphertext.to_vec();
        ct[7] ^= 0x01;
        rec.sealed.ciphertext = ct.into();
        assert!(matches!(
            inbox.offer(3, &encode("r", &rec).unwrap()),
            Err(Refusal::Tampered(_))
        ));
        // Node 1's sealed update replayed under node 3's key: the header says node 1.
        assert!(matches!(
            inbox.offer(3, &sealed_for(&current, &honest[0])),
            Err(Refusal::Misaddressed(_))
        ));
        // ... and with the header rewritten to node 3, the seal no longer verifies.
        let mut replay: UpdateRecord =
            weft::fedavg::record::decode("r", &sealed_for(&current, &honest[0])).unwrap();
        replay.node = 3;
        assert!(matches!(
            inbox.offer(3, &encode("r", &replay).unwrap()),
            Err(Refusal::Tampered(_))
        ));
        // Garbage, and a well-sealed update whose numbers are not finite.
        assert!(matches!(
            inbox.offer(3, &Bytes::from_static(b"\xc1garbage")),
            Err(Refusal::Undecodable(_))
        ));
        let mut poisoned = update(3, 30, 4.0);
        poisoned.params[0] = f32::INFINITY;
        assert!(matches!(
            inbox.offer(3, &sealed_for(&current, &poisoned)),
            Err(Refusal::Invalid(_))
        ));
    });
    assert!(
        log.contains(
            "round 3: rejected the update stored by node 2: encrypted for an old aggregator \
             (sealed for key"
        ) && log.contains("it is not averaged"),
        "{log}"
    );
    assert!(
        log.contains("rejected the update stored by node 3: authentication failed"),
        "{log}"
    );
    assert_eq!(inbox.rejected().len(), 6);
    // Nothing refused is averaged: only node 1 is in, so the round cannot close.
    assert_eq!(inbox.admitted().collect::<Vec<_>>(), [1]);
    assert!(inbox.average(3).is_none());

    // The participants seal again for the current key; node 1 resubmits too (new bytes,
    // same update), which replaces its update instead of adding a second one.
    let resubmit = [
        (2, sealed_for(&current, &honest[1])),
        (3, sealed_for(&current, &honest[2])),
        (1, sealed_for(&current, &honest[0])),
    ];
    for (node, bytes) in &resubmit {
        assert!(matches!(inbox.offer(*node, bytes), Ok(true)));
        assert!(
            matches!(inbox.offer(*node, bytes), Ok(false)),
            "judged once"
        );
    }
    let (params, contributors) = inbox.average(3).expect("every node is in");
    let nodes: Vec<(u32, u64)> = contributors.iter().map(|c| (c.node, c.samples)).collect();
    assert_eq!(nodes, [(1, 10), (2, 20), (3, 30)]);
    let want = fedavg(honest.iter().map(|u| (u.samples, u.params.as_slice()))).unwrap();
    assert_eq!(params, want);
    // (10 * 1 + 20 * 2 + 30 * 4) / 60: no refused or repeated update moved it.
    assert!((params[0] - 170.0 / 60.0).abs() < 1e-6);
}
