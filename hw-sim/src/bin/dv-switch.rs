//! `dv-switch SOCKET [--jitter-us N] [--members ID,ID,...] [--barrier-deadline-ms N]`: runs
//! an emulated Data Vortex switch that endpoints in other processes attach to with the
//! fabric name `unix:SOCKET`. Runs until killed.
//!
//! `--members` admits only those node ids; `--barrier-deadline-ms` sets how long an epoch
//! waits for a member that does not enter its barrier before evicting it (0: forever).

use std::time::Duration;

use hw_sim::vortex::{SwitchConfig, SwitchServer};

const USAGE: &str =
    "usage: dv-switch SOCKET [--jitter-us N] [--members ID,ID,...] [--barrier-deadline-ms N]";

/// The socket path and the switch's settings, from the command line.
fn parse(args: &[String]) -> Option<(String, SwitchConfig)> {
    let (path, mut rest) = args.split_first()?;
    let mut cfg = SwitchConfig::default();
    while let [flag, value, tail @ ..] = rest {
        match flag.as_str() {
            "--jitter-us" => cfg.jitter = Duration::from_micros(value.parse().ok()?),
            "--barrier-deadline-ms" => {
                let ms: u64 = value.parse().ok()?;
                cfg.barrier_deadline = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--members" => {
                let ids = value.split(',').map(|id| id.trim().parse().ok());
                cfg.members = Some(ids.collect::<Option<_>>()?);
            }
            _ => return None,
        }
        rest = tail;
    }
    rest.is_empty().then(|| (path.clone(), cfg))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, cfg)) = parse(&args) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    match SwitchServer::bind(&path, cfg) {
        Ok(server) => {
            println!("dv-switch listening on {}", server.fabric());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("dv-switch: cannot listen on {path}: {e}");
            std::process::exit(1);
        }
    }
}
