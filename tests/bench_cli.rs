//! `weft bench` end to end on loopback, kept small: a two-cell matrix on fresh local
//! clusters plus three election trials, and the matrix against a running cluster named by
//! its config file. Checks the numbers in report.json, not just that files appear.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use weft::local_cluster::{Fabric, LocalCluster};

fn weft(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run weft");
    assert!(
        out.status.success(),
        "weft {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn check_cells(r: &Value, want: &[(u64, u64)], entries: u64) {
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), want.len());
    for (c, (servers, clients)) in cells.iter().zip(want) {
        assert_eq!(
            (c["servers"].as_u64(), c["clients"].as_u64()),
            (Some(*servers), Some(*clients))
        );
        // Every put was acknowledged and timed; the rates agree with the wall time.
        assert_eq!(c["errors"], 0);
        assert_eq!(c["latency"]["count"].as_u64(), Some(entries));
        let (rate, secs) = (
            c["requests_per_s"].as_f64().unwrap(),
            c["duration_s"].as_f64().unwrap(),
        );
        assert!(
            (rate * secs - entries as f64).abs() < 1.0,
            "{rate} req/s × {secs} s"
        );
        let lat = &c["latency"];
        assert!(lat["min_ns"].as_u64() <= lat["p50_ns"].as_u64());
        assert!(lat["p50_ns"].as_u64() <= lat["p99_ns"].as_u64());
        assert_eq!(c["cdf"].as_array().unwrap().last().unwrap()[1], 1.0);
    }
}

#[test]
fn a_small_matrix_and_election_trials_on_local_clusters() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let stdout = weft(&[
        "bench",
        "--servers",
        "3",
        "--clients",
        "1,4",
        "--entries",
        "200",
        "--sizes",
        "100",
        "--election-trials",
        "3",
        "--election-servers",
        "3",
        "--snapshot-entries",
        "50",
        "--out",
        dir,
    ])
    .stdout;
    let r = report(out.path());
    check_cells(&r, &[(3, 1), (3, 4)], 200);
    assert_eq!(r["snapshot_entries"], 50);
    for c in r["cells"].as_array().unwrap() {
        // 200 puts of 100 B cannot fit in less than 20 KB of log.
        assert!(c["leader_disk_bytes"].as_u64().unwrap() > 20_000, "{c}");
    }
    let e = &r["elections"];
    let trials = e["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    for t in trials {
        // A crash is noticed only when an election timeout (150–300 ms here) runs out.
        let ms = t["downtime_ms"].as_f64().unwrap();
        assert!((100.0..10_000.0).contains(&ms), "{t}");
        assert!(t["terms"].as_u64().unwrap() >= 1);
    }
    assert_eq!(
        e["terms_histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        3
    );
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "CDF, throughput and election plots"
    );
    let table = String::from_utf8_lossy(&stdout);
    assert!(
        table.contains("req/s") && table.contains("elections (3 nodes, 3 trials)"),
        "{table}"
    );
    // The floor is measured in the same run and every cell is quoted against it.
    let b = &r["baseline"];
    let rtt = b["tcp_round_trip"]["p50_ns"].as_u64().unwrap();
    let sync = b["fdatasync"]["p50_ns"].as_u64().unwrap();
    assert!(rtt > 0 && sync > 0, "{b}");
    assert!(
        table.contains("floor (measured before the matrix)"),
        "{table}"
    );
    let p50 = r["cells"][0]["latency"]["p50_ns"].as_u64().unwrap();
    let ratio = format!("{:.2} ×", p50 as f64 / (rtt + sync) as f64);
    assert!(table.contains(&ratio), "{ratio} not in {table}");
    // And against the floor with one file per node synced at once.
    let shared = &b["shared_fdatasync"][0];
    assert_eq!(shared["writers"].as_u64(), Some(3), "{b}");
    let shared_sync = shared["fdatasync"]["p50_ns"].as_u64().unwrap();
    let ratio = format!("{:.2} ×", p50 as f64 / (rtt + shared_sync) as f64);
    assert!(table.contains(&ratio), "{ratio} not in {table}");
    assert!(table.contains("3 at once p50"), "{table}");
    // And the least a replicated write can take here: one more round trip on top.
    let least = format!(
        "{:.2} × floor",
        (2 * rtt + shared_sync) as f64 / (rtt + sync) as f64
    );
    assert!(table.contains(&least), "{least} not in {table}");
    // So is the ceiling, once per client count of the matrix.
    let ceilings = b["echo_ceiling"].as_array().unwrap();
    let counts: Vec<u64> = ceilings
        .iter()
        .map(|c| c["clients"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 4], "{b}");
    let ceiling = ceilings[1]["requests_per_s"].as_f64().unwrap();
    let rate = r["cells"][1]["requests_per_s"].as_f64().unwrap();
    let share = format!("{:.1} %", 100.0 * rate / ceiling);
    assert!(table.contains(&share), "{share} not in {table}");
    // Beside it, the same clients against a tokio server.
    let tokio = ceilings[1]["tokio_requests_per_s"].as_f64().unwrap();
    assert!(
        table.contains(&format!("(tokio: {tokio:.0})")),
        "{tokio} not in {table}"
    );
}

#[test]
fn the_matrix_runs_against_a_running_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::create(
        &tmp.path().join("cluster"),
        Path::new(env!("CARGO_BIN_EXE_weft")),
        3,
        3,
        Fabric::Udp,
    )
    .unwrap();
    for id in 1..=3 {
        cluster.start(id).unwrap();
    }
    cluster.leader(Duration::from_secs(15)).expect("a leader");
    let out = tmp.path().join("report");
    let config = cluster.config().to_str().unwrap().to_string();
    // Two clients, 10-byte values.
    let bench = |entries: &str, pipeline: &str| {
        weft(&[
            "bench",
            "--cluster",
            &config,
            "--clients",
            "2",
            "--entries",
            entries,
            "--sizes",
            "10",
            "--pipeline",
            pipeline,
            "--out",
            out.to_str().unwrap(),
        ]);
        report(&out)
    };
    let r = bench("100", "1");
    check_cells(&r, &[(3, 2)], 100);
    assert!(
        r["elections"].is_null(),
        "no election trials against nodes we do not own"
    );
    // The puts really landed in the cluster, beside the key each client warmed up with.
    let mut client = cluster.client(Duration::from_secs(10)).unwrap();
    let all = client.get_all().unwrap();
    assert_eq!(all.len(), 101);
    assert!(all.contains_key("bench-warm-up"));

    // Again with 8 puts in flight per client: every one acknowledged, and the ceiling is
    // measured with as many in flight.
    let r = bench("300", "8");
    check_cells(&r, &[(3, 2)], 300);
    assert_eq!(r["cells"][0]["pipeline"], 8);
    assert_eq!(r["baseline"]["echo_ceiling"][0]["in_flight"], 8);
    // 150 keys per client (the first run's among them) and the key that found the leader.
    let all = client.get_all().unwrap();
    assert_eq!(all.len(), 301);
    assert!(all.contains_key("bench-1-149") && all.contains_key("bench-warm-up"));
}
