//! `edge-infer-bench`: the benchmark harness of edge-infer. Each subcommand
//! is one measurement; `scripts/bench.sh` and `bench/*.sh` combine them
//! (see BENCHMARKS.md for what comes out).
//!
//! - `floor`: raw invoke latency of one model in-process (the runtime floor).
//! - `echo`: the messaging floor, a client that only echoes ids back.
//! - `load`: one open-loop run per rate, a JSON line each.
//! - `drive`: starts a target and measures everything (see drive.rs).
//! - `coldstart`: cold start and RSS of a command only.
//! - `outage`: the outbox's fill and replay while the target's uplink is
//!   down and after it returns (see outage.rs).
//!
//! Exit status: 0 ok, 1 a measurement failed, 2 bad usage.

mod drive;
mod echo;
mod floor;
mod load;
mod mqtt;
mod outage;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The benchmark harness of edge-infer: runtime floor, messaging floor,
/// open-loop load generator and target driver
///
/// Results are JSON (stdout or --out); progress goes to stderr. A repeated
/// option takes its last value, except those that add to a list (echo's --in
/// and --out, --rate, --only). scripts/bench.sh runs everything in order.
#[derive(Debug, Parser)]
#[command(
    name = "edge-infer-bench",
    version,
    verbatim_doc_comment,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Raw invoke latency of one model in-process (the runtime floor)
    ///
    /// Loads MODEL through model-runtime with the LoadOptions the daemon
    /// uses and times `--iters` invokes after `--warmup` ones; prints one
    /// JSON object (per invoke and, with --batch, per row).
    #[command(args_override_self = true, verbatim_doc_comment)]
    Floor(floor::FloorArgs),
    /// The messaging floor: echo each message's id back through the broker
    ///
    /// Subscribes to every --in filter and answers each message on the
    /// --out template given with it (`{1}` is the last level of the
    /// incoming topic). JSON payloads get `{"id":...}`, raw ones an empty
    /// reply; --qos 1 subscribes and answers at QoS 1, as the daemon's
    /// defaults do. Prints READY once subscribed.
    #[command(args_override_self = true, verbatim_doc_comment)]
    Echo(echo::EchoArgs),
    /// Open-loop load: one run per rate, a JSON line each
    ///
    /// Send times are fixed in advance; latency is measured from the
    /// scheduled send to the matching result (no coordinated omission).
    #[command(args_override_self = true, verbatim_doc_comment)]
    Load(load::LoadArgs),
    /// Start a target (the command after `--`) and measure everything
    ///
    /// Cold start (--cold-starts times), then per workload of --workloads:
    /// latency at its fixed rates, the highest sustained rate (nothing lost,
    /// no errors, p99 within --slo-p99-ms), CPU seconds per 1,000 messages,
    /// and the peak RSS of each phase; then, with --mixed, several
    /// workloads at once. Writes one JSON document to --out.
    #[command(args_override_self = true, verbatim_doc_comment)]
    Drive(drive::DriveArgs),
    /// Cold start and peak RSS of a command (after `--`) only, repeated
    #[command(args_override_self = true, verbatim_doc_comment)]
    Coldstart(drive::ColdstartArgs),
    /// The outbox: fill while the target's uplink is down, replay after
    ///
    /// Sends --count messages (QoS 1) while the uplink broker is down,
    /// times their acknowledgements, writes --filled and waits for the
    /// uplink (the caller starts it), then times the replay of every
    /// stored result and, with --live-rate, fresh messages meanwhile. The
    /// results' subscriber needs a persistent session at the uplink,
    /// created first with --prepare. Prints one JSON object.
    #[command(args_override_self = true, verbatim_doc_comment)]
    Outage(outage::OutageArgs),
}

/// Seconds as a duration: a finite number, 0 or more.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| "needs a number of seconds, 0 or more".into())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version arrive here too (stdout, success); usage
            // errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Floor(a) => floor::main(&a),
        Command::Echo(a) => echo::main(&a),
        Command::Load(a) => load::main(&a),
        Command::Drive(a) => drive::main(&a),
        Command::Coldstart(a) => drive::coldstart(&a),
        Command::Outage(a) => outage::main(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-infer-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_repeated_option_takes_its_last_value_and_lists_add_up() {
        let cli = Cli::try_parse_from([
            "edge-infer-bench",
            "load",
            "--port",
            "1",
            "--topic",
            "t",
            "--results",
            "r",
            "--fixture",
            "f.json",
            "--rate",
            "100,1000",
            "--rate=5000",
            "--port",
            "2",
        ])
        .unwrap();
        let Command::Load(a) = cli.command else {
            panic!("not load: {cli:?}");
        };
        assert_eq!(a.port, 2);
        assert_eq!(a.rate, [100.0, 1000.0, 5000.0]);
        assert_eq!(a.seconds, 10.0);
        assert_eq!(a.grace, std::time::Duration::from_secs(3));
    }

    #[test]
    fn qos_is_0_or_1_and_the_outage_run_has_its_defaults() {
        let load = |qos: &str| {
            Cli::try_parse_from([
                "edge-infer-bench",
                "load",
                "--topic",
                "t",
                "--results",
                "r",
                "--fixture",
                "f.json",
                "--rate",
                "1",
                "--qos",
                qos,
            ])
        };
        let Command::Load(a) = load("1").unwrap().command else {
            panic!("not load");
        };
        assert_eq!((a.qos, a.results_port), (1, None));
        assert_eq!(load("2").unwrap_err().exit_code(), 2);
        let cli = Cli::try_parse_from([
            "edge-infer-bench",
            "outage",
            "--port",
            "1",
            "--uplink-port",
            "2",
            "--topic",
            "t",
            "--results",
            "r",
            "--fixture",
            "f.json",
        ])
        .unwrap();
        let Command::Outage(a) = cli.command else {
            panic!("not outage: {cli:?}");
        };
        assert_eq!((a.count, a.rate, a.live_rate), (20_000, 2000.0, 0.0));
        assert_eq!(a.client_id, "bench-outage-sub");
        assert!(!a.prepare);
    }

    #[test]
    fn flags_of_other_subcommands_are_refused() {
        for args in [
            &["edge-infer-bench", "floor", "m.tflite", "--rate", "1"][..],
            &[
                "edge-infer-bench",
                "echo",
                "--in",
                "a",
                "--out",
                "b",
                "--raw",
            ],
            &[
                "edge-infer-bench",
                "coldstart",
                "--ready",
                "notify",
                "--out",
                "o",
                "--no-search",
                "--",
                "x",
            ],
            &[
                "edge-infer-bench",
                "drive",
                "--name",
                "n",
                "--ready",
                "maybe",
                "--workloads",
                "w",
                "--out",
                "o",
                "--",
                "x",
            ],
            &[
                "edge-infer-bench",
                "load",
                "--topic",
                "t",
                "--results",
                "r",
                "--rate",
                "1",
            ],
            &[
                "edge-infer-bench",
                "load",
                "--topic",
                "t",
                "--results",
                "r",
                "--rate",
                "1",
                "--fixture",
                "f",
                "--grace=-1",
            ],
            &[
                "edge-infer-bench",
                "load",
                "--topic",
                "t",
                "--results",
                "r",
                "--rate",
                "1",
                "--fixture",
                "f",
                "--payload",
                "p",
            ],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert!(e.use_stderr(), "{args:?}");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
