//! The emulator across processes: a `dv-switch` process, endpoints attached over its Unix
//! socket (from this process and from a C program that knows only `dv_api.h`), source ids
//! that cannot be claimed twice, a killed process seen gone at the next barrier, and a
//! switch that admits only its members on a private socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hw_sim::vortex::{DvError, Endpoint};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// A `dv-switch` child process, killed on drop.
struct SwitchProcess {
    child: Child,
    fabric: String,
    _dir: tempfile::TempDir,
}

impl SwitchProcess {
    fn start(tag: &str) -> SwitchProcess {
        SwitchProcess::start_with(tag, &[])
    }

    /// Starts `dv-switch SOCKET ARGS...`.
    fn start_with(tag: &str, args: &[&str]) -> SwitchProcess {
        let dir = tempfile::Builder::new().prefix(tag).tempdir().unwrap();
        let sock = dir.path().join("switch.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_dv-switch"))
            .arg(&sock)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting dv-switch");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "dv-switch said {line:?}");
        SwitchProcess {
            child,
            fabric: format!("unix:{}", sock.display()),
            _dir: dir,
        }
    }

    fn socket(&self) -> &Path {
        Path::new(self.fabric.strip_prefix("unix:").unwrap())
    }
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Barriers on every endpoint at once until each has seen `until`.
fn barrier_all(eps: &[&Endpoint]) -> Vec<hw_sim::vortex::EpochClose> {
    std::thread::scope(|s| {
        let hs: Vec<_> = eps
            .iter()
            .map(|e| s.spawn(|| e.barrier(WAIT).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn endpoints_in_this_process_share_a_switch_process() {
    // No barrier deadline: the barrier threads this test spawns each round are waited
    // for, however late the scheduler runs them.
    let sw = SwitchProcess::start_with("xproc", &["--barrier-deadline-ms", "0"]);
    let eps: Vec<Endpoint> = (1..=3)
        .map(|n| Endpoint::open(&sw.fabric, n).unwrap())
        .collect();
    assert_eq!(Endpoint::open(&sw.fabric, 2).err(), Some(DvError::InUse));
    let refs: Vec<&Endpoint> = eps.iter().collect();
    barrier_all(&refs);
    for round in 0..200u32 {
        for e in &eps {
            e.multicast(None, &round.to_le_bytes()).unwrap();
        }
        let closes = barrier_all(&refs);
        assert!(closes.windows(2).all(|w| w[0] == w[1]));
        let orders: Vec<Vec<u32>> = eps
            .iter()
            .map(|e| {
                let mut v = Vec::new();
                while let Ok(m) = e.recv(Some(Duration::ZERO)) {
                    assert_eq!(&m.bytes[..], &round.to_le_bytes());
                    v.push(m.source);
                }
                v
            })
            .collect();
        for (i, o) in orders.iter().enumerate() {
            assert_eq!(o.len(), 2, "node {} got both others' messages", i + 1);
        }
        // Shared messages in one order: node 1 and 2 both see node 3's; etc.
        let common = |a: &Vec<u32>, b: &Vec<u32>| -> (Vec<u32>, Vec<u32>) {
            (
                a.iter().filter(|x| b.contains(x)).copied().collect(),
                b.iter().filter(|x| a.contains(x)).copied().collect(),
            )
        };
        for a in &orders {
            for b in &orders {
                let (x, y) = common(a, b);
                assert_eq!(x, y);
            }
        }
    }
}

#[test]
fn a_killed_endpoint_process_is_gone_at_the_next_barrier_and_garbage_is_refused() {
    let sw = SwitchProcess::start("xkill");
    let a = Endpoint::open(&sw.fabric, 1).unwrap();
    // A raw connection speaking garbage is disconnected; the switch lives on.
    let mut raw = UnixStream::connect(sw.socket()).unwrap();
    raw.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    let mut reply = Vec::new();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.read_to_end(&mut reply);
    // A raw endpoint attached as node 7 cannot claim to be anyone else: its messages are
    // stamped 7 whatever their contents say.
    let mut hello = vec![9, 0, 0, 0, 1];
    hello.extend(1u32.to_le_bytes());
    hello.extend(7u32.to_le_bytes());
    let mut raw7 = UnixStream::connect(sw.socket()).unwrap();
    raw7.write_all(&hello).unwrap();
    let mut inject = vec![0u8; 4];
    inject.push(4);
    inject.extend(1u64.to_le_bytes());
    inject.extend(1u32.to_le_bytes());
    inject.extend(1u32.to_le_bytes());
    inject.extend(b"from node 1, honest");
    let len = (inject.len() - 4) as u32;
    inject[..4].copy_from_slice(&len.to_le_bytes());
    raw7.write_all(&inject).unwrap();
    raw7.write_all(&[1, 0, 0, 0, 5]).unwrap(); // Barrier
    let deadline = Instant::now() + Duration::from_secs(10);
    let (close, m) = loop {
        let close = a.barrier(WAIT).unwrap();
        if let Ok(m) = a.recv(Some(Duration::ZERO)) {
            break (close, m);
        }
        assert!(Instant::now() < deadline, "node 7's message never arrived");
    };
    assert_eq!(m.source, 7);
    assert_eq!(&m.bytes[..], b"from node 1, honest");
    assert_eq!(close.members, vec![1, 7]);
    // The child "process" dies: its connection drops, and the next barrier shows it.
    drop(raw7);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = a.barrier(WAIT).unwrap();
        if c.members == vec![1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 7 never left the member list"
        );
    }
}

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn a_c_program_linked_against_the_header_talks_to_rust_endpoints() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let include = manifest.join("../ffi/include");
    let lib = target_dir().join("libhw_sim.a");
    assert!(
        lib.exists(),
        "the emulator's static library {} was not built",
        lib.display()
    );
    let out = tempfile::tempdir().unwrap();
    let exe = out.path().join("dv_pingpong");
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let compiler = cc::Build::new()
        .opt_level(0)
        .target(&target)
        .host(&target)
        .cargo_metadata(false)
        .warnings(true)
        .get_compiler();
    let status = compiler
        .to_command()
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(&include)
        .arg(manifest.join("tests/c/dv_pingpong.c"))
        .arg("-o")
        .arg(&exe)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s", "-lc"])
        .status()
        .expect("running the C compiler");
    assert!(
        status.success(),
        "the C program did not compile against dv_api.h"
    );

    let sw = SwitchProcess::start("cabi");
    let rust = Endpoint::open(&sw.fabric, 1).unwrap();
    let child = Command::new(&exe)
        .arg(&sw.fabric)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got_hello = false;
    let mut got_pong = false;
    let mut pinged = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(got_hello && got_pong) {
        assert!(Instant::now() < deadline, "no exchange with the C program");
        if rust.members().contains(&10) && !pinged {
            rust.send(10, b"ping42").unwrap();
            pinged = true;
        }
        if rust.barrier(Some(Duration::from_millis(200))).is_err() {
            continue;
        }
        while let Ok(m) = rust.recv(Some(Duration::ZERO)) {
            assert_eq!(m.source, 10);
            match &m.bytes[..] {
                b"hello from C\0" => got_hello = true,
                b"pong:42" => got_pong = true,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }
    // Keep closing epochs until the C program has left.
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| child.wait_with_output().unwrap());
        while !h.is_finished() {
            let _ = rust.barrier(Some(Duration::from_millis(50)));
        }
        h.join().unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "C program failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("members: 1 10"), "{stdout}");
    assert!(stdout.ends_with("ok\n"));
}

#[test]
fn a_switch_process_admits_only_its_members_on_a_private_socket() {
    let sw = SwitchProcess::start_with(
        "xmembers",
        &["--members", "1,2", "--barrier-deadline-ms", "50"],
    );
    let mode = std::fs::metadata(sw.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    assert_eq!(Endpoint::open(&sw.fabric, 3).err(), Some(DvError::Denied));
    let one = Endpoint::open(&sw.fabric, 1).unwrap();
    let two = Endpoint::open(&sw.fabric, 2).unwrap();
    let close = std::thread::scope(|s| {
        let h = s.spawn(|| two.barrier(WAIT).unwrap());
        let c = one.barrier(WAIT).unwrap();
        assert_eq!(h.join().unwrap(), c);
        c
    });
    assert_eq!(close.members, vec![1, 2]);
    // Node 2 stops entering the barrier: 50 ms later node 1's epochs close without it.
    let t = Instant::now();
    let c = one.barrier(WAIT).unwrap();
    assert_eq!(c.members, vec![1]);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(two.barrier(WAIT), Err(DvError::Closed));
}
