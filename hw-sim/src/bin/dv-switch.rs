//! `dv-switch SOCKET [--jitter-us N]`: runs an emulated Data Vortex switch that endpoints in
//! other processes attach to with the fabric name `unix:SOCKET`. Runs until killed.

use std::time::Duration;

use hw_sim::vortex::{SwitchConfig, SwitchServer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: dv-switch SOCKET [--jitter-us N]";
    let Some(path) = args.first() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mut cfg = SwitchConfig::default();
    match args.get(1).map(String::as_str) {
        None => {}
        Some("--jitter-us") => match args.get(2).and_then(|n| n.parse().ok()) {
            Some(us) => cfg.jitter = Duration::from_micros(us),
            None => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        },
        Some(_) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    match SwitchServer::bind(path, cfg) {
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
