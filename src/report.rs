//! What `weft transport ping` and `echo` print: the RTT table and the transport counters.

use weft_transport::Stats;

use crate::ping::{PeerReport, Plan};

/// Prints the per-peer RTT table and notes on losses.
pub fn print_table(reports: &[PeerReport], plan: &Plan) {
    println!("round-trip time (µs)");
    println!(
        "{:>6} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "peer", "sent", "answered", "lost", "min", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    for r in reports {
        let mut line = format!(
            "{:>6} {:>8} {:>8} {:>6}",
            r.peer.to_string(),
            r.sent,
            r.answered,
            r.lost
        );
        match r.summary() {
            Some(s) => {
                for us in s.columns_us() {
                    line.push_str(&format!(" {us:>9.1}"));
                }
            }
            None => line.push_str(&format!(" {:>9}", "-").repeat(7)),
        }
        println!("{line}");
    }
    for r in reports {
        let mut notes = Vec::new();
        if r.gave_up {
            notes.push(format!(
                "unreachable: gave up after {} pings in a row were lost",
                plan.give_up_after
            ));
        }
        if r.warmup_lost > 0 {
            notes.push(format!("{} warmup pings lost", r.warmup_lost));
        }
        if r.late_pongs > 0 {
            notes.push(format!("{} late pongs ignored", r.late_pongs));
        }
        if r.ignored > 0 {
            notes.push(format!("{} other messages ignored", r.ignored));
        }
        if !notes.is_empty() {
            println!("node {}: {}", r.peer, notes.join("; "));
        }
    }
}

/// The transport's counters on one line: the non-zero ones by name, then a note that the
/// rest are zero. Falls back to the `Debug` form if that is not `Name { field: n, ... }`.
pub fn format_stats(stats: &Stats) -> String {
    let debug = format!("{stats:?}");
    compact_counters(&debug).unwrap_or(debug)
}

/// Parses `Name { a: 1, b: 0 }` into `a 1; all other counters 0`.
fn compact_counters(debug: &str) -> Option<String> {
    let body = debug.get(debug.find('{')? + 1..debug.rfind('}')?)?.trim();
    let mut nonzero = Vec::new();
    let mut zero = 0;
    for field in body.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (name, value) = field.split_once(':')?;
        match value.trim().parse::<u64>().ok()? {
            0 => zero += 1,
            n => nonzero.push(format!("{} {n}", name.trim())),
        }
    }
    Some(match (nonzero.is_empty(), zero) {
        (true, _) => "all counters 0".to_string(),
        (false, 0) => nonzero.join(", "),
        (false, _) => format!("{}; all other counters 0", nonzero.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_debug_counters() {
        assert_eq!(
            compact_counters("Stats { sent: 5, lost: 0, got: 4 }").as_deref(),
            Some("sent 5, got 4; all other counters 0")
        );
        assert_eq!(
            compact_counters("Stats { a: 0 }").as_deref(),
            Some("all counters 0")
        );
        assert_eq!(compact_counters("Stats { a: x }"), None);
        assert_eq!(compact_counters("no braces"), None);
    }

    #[test]
    fn formats_real_stats() {
        let line = format_stats(&Stats::default());
        assert_eq!(line, "all counters 0");
    }
}
