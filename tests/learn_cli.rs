//! `weft learn` synthesizes and saves a verified protocol with its drawing; `weft verify`
//! proves it again, and refuses it (with a counterexample) where it does not hold.

use std::process::Command;

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("weft runs")
}

/// Runs `weft args`, which must succeed; its standard output.
fn weft_ok(args: &[&str]) -> String {
    let o = weft(args);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// `weft learn --spec nbac --t 1 --out OUT` with `more` arguments; its output.
fn learn_nbac_t1(out: &std::path::Path, more: &[&str]) -> String {
    let mut args = vec![
        "learn",
        "--spec",
        "nbac",
        "--t",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    weft_ok(&args)
}

/// `weft learn --spec paper --method METHOD --vector --out OUT`; its output.
fn learn_paper(method: &str, out: &std::path::Path) -> String {
    weft_ok(&[
        "learn",
        "--spec",
        "paper",
        "--method",
        method,
        "--vector",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn learn_then_verify() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nbac.json");
    let text = learn_nbac_t1(&out, &["--n", "3"]);
    assert!(
        text.contains("explicit proved") && text.contains("z3       proved"),
        "{text}"
    );
    assert!(out.exists() && out.with_extension("dot").exists());
    let o = weft(&["verify", "--protocol", out.to_str().unwrap()]);
    assert!(o.status.success());
    // One round is not enough for one crash: verification fails with a counterexample.
    let o = weft(&[
        "verify",
        "--protocol",
        out.to_str().unwrap(),
        "--rounds",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("counterexample"));
    // The deep Q-learner, on the paper's specification.
    let learned = dir.path().join("paper.json");
    let text = learn_paper("dqn", &learned);
    assert!(text.contains("deep Q-learning: proved"), "{text}");
    assert!(weft(&["verify", "--protocol", learned.to_str().unwrap()])
        .status
        .success());
    // The paper's own targets, named as such in the output and the artifact.
    let td = dir.path().join("paper-td.json");
    let text = learn_paper("dqn-td", &td);
    assert!(
        text.contains("deep Q-learning (TD targets): proved"),
        "{text}"
    );
    let saved = std::fs::read_to_string(&td).unwrap();
    assert!(saved.contains("dqn-td (seed 1)"), "{saved}");
}

#[test]
fn three_processes_run_a_learned_protocol_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let protocol = dir.path().join("nbac.json");
    let o = weft(&[
        "learn",
        "--spec",
        "nbac",
        "--t",
        "1",
        "--n",
        "3",
        "--out",
        protocol.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let cluster = weft::local_cluster::LocalCluster::create(
        dir.path(),
        &exe,
        3,
        3,
        weft::local_cluster::Fabric::Udp,
    )
    .unwrap();
    for (votes, want) in [
        (["commit", "commit", "commit"], "Commit"),
        (["commit", "abort", "commit"], "Abort"),
    ] {
        let children: Vec<_> = (1..=3)
            .map(|id| {
                Command::new(&exe)
                    .args([
                        "commit",
                        "--protocol",
                        protocol.to_str().unwrap(),
                        "--config",
                    ])
                    .arg(cluster.config())
                    .args([
                        "--node",
                        &id.to_string(),
                        "--vote",
                        votes[id - 1],
                        "--round-timeout-ms",
                        "2000",
                    ])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains(&format!("decision: {want}")),
                "{text}"
            );
        }
    }
}

/// The paper's open problem: one symmetric table learned by self-play at 3 and 4 processes
/// is proved by both verifiers at 5, where it never trained.
#[test]
fn a_table_learned_at_three_and_four_processes_holds_at_five() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nbac34.json");
    let text = learn_nbac_t1(
        &out,
        &[
            "--n",
            "3,4",
            "--cap",
            "1",
            "--method",
            "dqn",
            "--budget-s",
            "600",
        ],
    );
    for n in [3, 4] {
        assert!(
            text.contains(&format!("n = {n}  explicit proved"))
                && text.contains(&format!("n = {n}  z3       proved")),
            "{text}"
        );
    }
    let text = weft_ok(&["verify", "--protocol", out.to_str().unwrap(), "--n", "5"]);
    assert!(
        text.contains("n = 5  explicit proved") && text.contains("n = 5  z3       proved"),
        "{text}"
    );
    // The vector encoding has one table per size: several sizes are refused.
    let o = weft(&[
        "learn", "--spec", "nbac", "--n", "3,4", "--vector", "--method", "smt",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symmetric encoding"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The shipped two-crash protocol (synthesized at n = 3) holds at n = 4, where it was
/// never synthesized, by both verifiers; and two rounds are refuted.
#[test]
fn the_shipped_two_crash_protocol_holds_at_four_processes() {
    let protocol = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nbac-t2.json");
    let text = weft_ok(&["verify", "--protocol", protocol, "--n", "4"]);
    assert!(
        text.contains("n = 4  explicit proved") && text.contains("n = 4  z3       proved"),
        "{text}"
    );
    let o = weft(&["verify", "--protocol", protocol, "--rounds", "2"]);
    assert!(!o.status.success());
}

/// The shipped learned two-crash protocol (deep Q-learning at n = 3 and 4, two anonymous
/// states) holds at n = 5, where it never trained, by both verifiers.
#[test]
fn the_shipped_learned_two_crash_protocol_holds_at_five_processes() {
    let protocol = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nbac-t2-learned.json");
    let text = weft_ok(&["verify", "--protocol", protocol, "--n", "5"]);
    assert!(
        text.contains("dqn (seed 1)")
            && text.contains("n = 5  explicit proved")
            && text.contains("n = 5  z3       proved"),
        "{text}"
    );
}

/// A client command whose reader stops early (`weft verify ... | head -1`) ends quietly,
/// as other command-line tools do, instead of panicking on the broken pipe.
#[test]
fn a_closed_output_pipe_ends_a_client_command_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let protocol = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nbac-t2.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["verify", "--protocol", protocol])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft starts");
    drop(child.stdout.take()); // the reader is gone before the first line
    let o = child.wait_with_output().expect("weft ends");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(o.status.signal(), Some(SIGPIPE), "{:?}", o.status);
}

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;
