//! `xlb`: the daemon (`xlb run`) and the CLI that talks to it. `validate` works offline.
//! Exit codes: 0 success, 1 rejected by guardrails (or violations found), 2 anything
//! else: unreadable or unparsable input, daemon unreachable, kernel errors; `diff
//! --exit-code` exits 3 when something differs; 4 when a watched change or a rollout was
//! rolled back or aborted; 78 when `xlb run` cannot start because of its config file
//! (the unit does not restart on it).

mod cli;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{CommandFactory, Parser, Subcommand};
use cli::{
    change::{self, GuardArgs, WeightOp},
    decap::{self, DecapOp},
    explain, flows, generate, history,
    host::{self, HostOp},
    inspect,
    output::ERROR,
    pass::{self, PassOp},
    rollout::{self, RolloutOp, Steps, parse_steps},
    status, teardown, trace, validate,
};
use xlb::{api::Request, config::DEFAULT_SOCKET};

#[derive(Parser)]
#[command(
    name = "xlb",
    version,
    about = "XDP load balancer with guarded weight changes"
)]
struct Cli {
    /// The daemon's socket, for the verbs that talk to it (`xlb run` itself listens on
    /// its config's [daemon] socket).
    #[arg(long, global = true, env = "XLB_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// `xlb run`'s exit status, signals, files and environment, for its help and man page.
const RUN_NOTES: &str = "\
Exit status: 0 stopped (SIGTERM, SIGINT or `xlb teardown`); 78 a config problem (the file \
is unreadable or unparsable, has no [daemon] interface, is refused by the guardrails \
with no generation to keep, or asks for a flow_capacity, max_vips or max_backends that the \
pinned maps cannot take without a decision): the unit does not restart it; 2 any other failure (no \
bpffs, a missing capability, an interface that does not exist).

Signals: SIGHUP re-reads the config file and applies it through the guardrails (refused \
if it would undo changes made since with the CLI); SIGTERM and SIGINT stop the daemon, \
and the data plane keeps forwarding on the last generation.

Files: the config file; [daemon] state_dir (default /var/lib/xlb: history/, audit.jsonl, \
watch.jsonl, lock); pin_dir (default /sys/fs/bpf/xlb: the pinned maps, program and link); \
socket (default /run/xlb/xlb.sock).

Environment: RUST_LOG filters the log (default info); XLB_LOG_TIME=0 or 1 forces \
timestamps off or on; NOTIFY_SOCKET (set by systemd) receives READY=1 once XDP is \
attached and the socket serves.";

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach XDP, apply the config, serve the CLI.
    #[command(after_long_help = RUN_NOTES)]
    Run {
        /// The config file: [daemon] settings, guardrails and VIPs.
        #[arg(long, default_value = "/etc/xlb/xlb.toml")]
        config: PathBuf,
        /// Replace a pinned flow table whose capacity differs from daemon.flow_capacity
        /// (established flows lose their entries).
        #[arg(long)]
        recreate_flow_table: bool,
    },
    /// Check a config offline. Exit 0 valid, 1 violations, 2 unreadable or unparsable.
    Validate {
        file: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// Also report guardrail limits looser than the built-in defaults (for config CI).
        #[arg(long)]
        strict: bool,
    },
    /// Show what applying FILE would change, and every violation: against the running
    /// daemon, or offline against a file written by `xlb export` (--against).
    #[command(
        after_long_help = "Exit status: 0 no violation (with --exit-code: and nothing \
                           differs), 1 violations, 2 unreadable or unparsable input or no \
                           daemon, 3 (with --exit-code) something differs."
    )]
    Diff {
        file: PathBuf,
        /// Compare with this exported generation instead of asking the daemon (offline,
        /// e.g. in a config repository's CI).
        #[arg(long, value_name = "EXPORTED")]
        against: Option<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// Exit 0 when nothing differs and 3 when something does (drift checks in CI).
        #[arg(long)]
        exit_code: bool,
    },
    /// Apply FILE's VIPs and guardrail policy through the guardrails.
    Apply {
        /// The config file ([daemon] settings in it take effect at the next `xlb run`).
        file: PathBuf,
        #[command(flatten)]
        guard: GuardArgs,
        /// Walk to FILE's weights in N steps (or `auto`: as few as keep each step within
        /// the guardrails, max-flow-shift above all), each watched for --interval; a
        /// breach rolls back to where the rollout started.
        #[arg(long, value_parser = parse_steps, requires = "interval")]
        steps: Option<Steps>,
        /// With --steps: how long each step is watched before the next (e.g. 30s).
        #[arg(long, value_parser = humantime::parse_duration, requires = "steps")]
        interval: Option<std::time::Duration>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The stepped rollout in progress (or the last one), and aborting it.
    Rollout {
        #[command(subcommand)]
        op: RolloutOp,
    },
    /// Change one backend's weight.
    Weight {
        #[command(subcommand)]
        op: WeightOp,
    },
    /// Set a backend's weight to 0: no new flows; established flows stay.
    Drain {
        vip: String,
        backend: String,
        #[command(flatten)]
        guard: GuardArgs,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// VIPs, backends, weights, health, table and observed shares, generation.
    Status {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per-backend packets, bytes, new flows and rates.
    Stats {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// Print again every INTERVAL seconds.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// With --watch: stop after this many samples (0 = until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Applied generations, oldest first.
    History {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// Also list attempts that changed nothing (rejected, refused, failed).
        #[arg(long)]
        all: bool,
    },
    /// Print the running generation as a config file (to bring a config repository in
    /// line with changes made by the CLI).
    Export,
    /// Re-apply an earlier generation (default: the one before the last change).
    Rollback {
        generation: Option<u64>,
        /// The newest generation that ran its watch window without a breach.
        #[arg(long, conflicts_with = "generation")]
        last_good: bool,
        #[command(flatten)]
        guard: GuardArgs,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Which backend a client's flow gets, and why.
    Explain {
        vip: String,
        /// CLIENT_IP:PORT, e.g. 198.18.0.1:40000 or [2001:db8::1]:40000.
        client: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the bpftool and jq commands that read this host's counters, by backend,
    /// VIP and reason name, from the pinned maps alone (no daemon needed).
    Inspect(inspect::Args),
    /// List flow entries: the flows in table slots that changed owner, which keep their
    /// backend through the flow table (every other flow follows its slot).
    Flows(flows::Args),
    /// Stream the running program's per-packet decisions: flow, verdict, backend, and
    /// whether the packet's flow was new or known. Off until a trace runs; bounded in rate.
    Trace(trace::Args),
    /// The XDP_PASS program for the peer of a veth that xlb runs on (native XDP_TX on a
    /// veth reaches only a peer that runs XDP).
    Pass {
        #[command(subcommand)]
        op: PassOp,
    },
    /// The backend side of `forwarding = "ipip"`: an XDP program that removes the outer
    /// header of packets from the load balancers' sources (and drops encapsulated
    /// packets from any other).
    Decap {
        #[command(subcommand)]
        op: DecapOp,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write a man page per verb into DIR (the package's man pages).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Withdraw this host's VIPs from its routers and wait for its traffic to stop, or
    /// announce them again ([daemon.announce]).
    Host {
        #[command(subcommand)]
        op: HostOp,
    },
    /// Detach XDP and unpin everything (stops a running daemon too; with
    /// [daemon.announce], withdraws every VIP and waits its drain_time first).
    Teardown {
        /// Without a daemon answering on --socket, the pin directory to tear down (never
        /// assumed: e.g. /sys/fs/bpf/xlb).
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
        /// Without a daemon: tear down this config's pin_dir, and with [daemon.announce]
        /// first withdraw its VIPs (an empty routes file, BIRD `configure`) and wait its
        /// drain_time.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xlb: {e}");
            ExitCode::from(ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<u8, String> {
    let socket = cli.socket;
    match cli.command {
        // Refused before the config's state and pin directories are touched.
        Command::Run { .. } if !xlb::object::HAS_DATAPLANE => {
            Err(xlb::dataplane::DataplaneError::NotBuilt.to_string())
        }
        Command::Run {
            config,
            recreate_flow_table,
        } => match xlb::daemon::run(&config, recreate_flow_table) {
            Ok(()) => Ok(0),
            Err(e) if e.downcast_ref::<xlb::daemon::ConfigProblem>().is_some() => {
                eprintln!("xlb: {}", causes(&e));
                Ok(xlb::daemon::EXIT_CONFIG)
            }
            Err(e) => Err(causes(&e)),
        },
        Command::Validate { file, json, strict } => validate::validate(&file, json, strict),
        Command::Diff {
            file,
            against: Some(exported),
            json,
            exit_code,
        } => validate::diff_against(&file, &exported, json, exit_code),
        Command::Diff {
            file,
            against: None,
            json,
            exit_code,
        } => change::diff(&socket, &file, json, exit_code),
        Command::Apply {
            file,
            guard,
            steps,
            interval,
            json,
        } => change::apply(&socket, &file, guard, steps, interval, json),
        Command::Rollout { op } => rollout::rollout(&socket, op),
        Command::Weight {
            op:
                WeightOp::Set {
                    vip,
                    backend,
                    weight,
                    guard,
                    json,
                },
        } => change::change(&socket, guard, json, Path::new(""), |guarded| {
            Request::WeightSet {
                vip,
                backend,
                weight,
                guarded,
            }
        }),
        Command::Drain {
            vip,
            backend,
            guard,
            json,
        } => change::change(&socket, guard, json, Path::new(""), |guarded| {
            Request::Drain {
                vip,
                backend,
                guarded,
            }
        }),
        Command::Rollback {
            generation,
            last_good,
            guard,
            json,
        } => change::change(&socket, guard, json, Path::new(""), |guarded| {
            Request::Rollback {
                generation,
                last_good,
                guarded,
            }
        }),
        Command::Status { json } => status::status(&socket, json),
        Command::Stats {
            json,
            watch,
            interval,
            count,
        } => status::stats(&socket, json, watch, interval, count),
        Command::History { json, all } => history::history(&socket, json, all),
        Command::Export => history::export(&socket),
        Command::Explain { vip, client, json } => explain::explain(&socket, vip, client, json),
        Command::Trace(args) => trace::trace(&socket, args),
        Command::Inspect(args) => inspect::inspect(&args),
        Command::Flows(args) => flows::flows(&socket, args),
        Command::Pass { op } => pass::pass(op),
        Command::Decap { op } => decap::decap(op),
        Command::Completions { shell } => {
            generate::completions(Cli::command(), shell);
            Ok(0)
        }
        Command::Manpages { dir } => generate::manpages(Cli::command(), &dir),
        Command::Host { op } => host::host(&socket, op),
        Command::Teardown { pin_dir, config } => teardown::teardown(&socket, pin_dir, config),
    }
}

/// An error with its causes, like `{:#}`, leaving out a cause that the message before it
/// already shows (error types that print their source, as most here do, would otherwise
/// repeat it).
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
