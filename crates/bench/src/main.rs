//! `edge-infer-bench`: the benchmark harness of edge-infer.
//!
//! - `floor MODEL [--threads N] [--iters N]`: raw invoke latency in-process.
//! - `echo --port P --in FILTER --out TEMPLATE`: the messaging floor.
//! - `load --port P --topic T --results FILTER (--payload FILE [--raw] | --fixture F [--case C] [--raw]) --rate R[,R..] --seconds S`:
//!   one open-loop run per rate, a JSON line each.
//! - `drive --name N --ready notify|line:TEXT --port P --workloads FILE --out FILE [..] -- CMD ARGS..`:
//!   starts a target and measures everything (see drive.rs).
//! - `coldstart --ready notify|line:TEXT --out FILE -- CMD ARGS..`: cold start and RSS only.

mod args;
mod drive;
mod echo;
mod floor;
mod load;
mod mqtt;

use std::process::ExitCode;

const USAGE: &str = "usage: edge-infer-bench floor|echo|load|drive|coldstart [options]  (see scripts/bench.sh and BENCHMARKS.md)";

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args::Args::parse(&raw, &["raw", "seq-topic", "no-search"]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("edge-infer-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match parsed.positional.first().map(String::as_str) {
        Some("floor") => floor::main(&parsed),
        Some("echo") => echo::main(&parsed),
        Some("load") => load::main(&parsed),
        Some("drive") => drive::main(&parsed),
        Some("coldstart") => drive::coldstart(&parsed),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-infer-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
