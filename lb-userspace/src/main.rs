//! `xlb`: the daemon (`xlb run`) and the CLI that talks to it. `validate` works offline.
//! Exit codes: 0 success, 1 rejected by guardrails (or violations found), 2 anything
//! else: unreadable or unparsable input, daemon unreachable, kernel errors; `diff
//! --exit-code` exits 3 when something differs.

/// `println!` that ends the program quietly, with success, when the reader has gone
/// (`xlb history | head -1`): a closed pipe is not an error of ours.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("xlb: writing the output: {e}");
            std::process::exit(2);
        }
    }};
}

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use xlb::{
    api::{self, Guarded, Request, Response},
    config::{self, DEFAULT_SOCKET},
    controller::{Explain, VipStatsView},
    dataplane::loader,
    guard::{self, Change, Maglev, Plan, Violation},
    history::{Attempt, Record, WatchOutcome},
};

#[derive(Parser)]
#[command(
    name = "xlb",
    version,
    about = "XDP load balancer with guarded weight changes"
)]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "XLB_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct GuardArgs {
    /// Plan and check only.
    #[arg(long)]
    dry_run: bool,
    /// Override the policy guardrails (not structure, nonzero-total or table-fidelity).
    #[arg(long, requires = "reason")]
    force: bool,
    /// Why; recorded in the history. Required with --force.
    #[arg(long)]
    reason: Option<String>,
    /// Watch the change for this long after it takes effect (e.g. 30s) and roll it back
    /// by itself if it breaches: a backend that gained share goes down, observed shares
    /// leave the table's, or the VIP drops packets. Waits for the verdict. Default: the
    /// config's [rollout] watch.
    #[arg(long, value_parser = humantime::parse_duration)]
    watch: Option<std::time::Duration>,
}

impl From<GuardArgs> for Guarded {
    fn from(a: GuardArgs) -> Self {
        Guarded {
            dry_run: a.dry_run,
            force: a.force,
            reason: a.reason,
            watch_ms: a.watch.map(|w| w.as_millis() as u64),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach XDP, apply the config, serve the CLI.
    Run {
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
    /// Show what applying FILE would change, and every violation.
    Diff {
        file: PathBuf,
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
    /// Detach XDP and unpin everything (stops a running daemon too).
    Teardown {
        /// Without a daemon answering on --socket, the pin directory to tear down (never
        /// assumed: e.g. /sys/fs/bpf/xlb).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RolloutOp {
    /// Target, step, generations and outcome.
    Status {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the rollout in progress and return to the generation it started from.
    Abort {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--steps`: a number or `auto`.
#[derive(Clone, Copy, Debug)]
enum Steps {
    Auto,
    N(u32),
}

fn parse_steps(s: &str) -> Result<Steps, String> {
    match s {
        "auto" => Ok(Steps::Auto),
        n => match n.parse::<u32>() {
            Ok(n) if (1..=xlb::rollout::MAX_STEPS).contains(&n) => Ok(Steps::N(n)),
            _ => Err(format!(
                "{s:?} is not `auto` or a number of steps from 1 to {}",
                xlb::rollout::MAX_STEPS
            )),
        },
    }
}

#[derive(Subcommand)]
enum WeightOp {
    /// xlb weight set VIP BACKEND WEIGHT
    Set {
        vip: String,
        backend: String,
        weight: i64,
        #[command(flatten)]
        guard: GuardArgs,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

const REJECTED: u8 = 1;
const ERROR: u8 = 2;
/// `diff --exit-code`: the file differs from the running state.
const DIFFERS: u8 = 3;
/// A watched change breached its watch and was rolled back.
const ROLLED_BACK: u8 = 4;

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

fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    say!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    api::call(socket, req)
}

fn run(cli: Cli) -> Result<u8, String> {
    let socket = cli.socket;
    match cli.command {
        Command::Run {
            config,
            recreate_flow_table,
        } => {
            xlb::daemon::run(&config, recreate_flow_table).map_err(|e| format!("{e:#}"))?;
            Ok(0)
        }
        Command::Validate { file, json, strict } => validate(&file, json, strict),
        Command::Diff {
            file,
            json,
            exit_code,
        } => {
            let (text, file) = read_config(&file)?;
            let r = call(
                &socket,
                &Request::Apply {
                    text,
                    file: file.clone(),
                    guarded: Guarded {
                        dry_run: true,
                        ..Guarded::default()
                    },
                },
            )?;
            let differs = r
                .plan
                .as_ref()
                .is_some_and(|p| !p.is_noop() || !p.restart.is_empty() || !p.violations.is_empty());
            let code = apply_result(r, json, true, &file)?;
            Ok(if code == 0 && exit_code && differs {
                DIFFERS
            } else {
                code
            })
        }
        Command::Apply {
            file,
            guard,
            steps,
            interval,
            json,
        } => {
            let (text, file) = read_config(&file)?;
            let label = file.clone();
            match (steps, interval) {
                (Some(steps), Some(interval)) => {
                    let steps = match steps {
                        Steps::Auto => None,
                        Steps::N(n) => Some(n),
                    };
                    let interval_ms = interval.as_millis() as u64;
                    let r = call(
                        &socket,
                        &Request::Rollout {
                            text,
                            file,
                            steps,
                            interval_ms,
                            guarded: guard.clone().into(),
                        },
                    )?;
                    rollout_result(r, json, guard.dry_run, &label)
                }
                _ => change(&socket, guard, json, &label, |guarded| Request::Apply {
                    text,
                    file,
                    guarded,
                }),
            }
        }
        Command::Rollout { op } => {
            let (req, json) = match op {
                RolloutOp::Status { json } => (Request::RolloutStatus, json),
                RolloutOp::Abort { json } => (Request::RolloutAbort, json),
            };
            rollout_result(call(&socket, &req)?, json, false, Path::new(""))
        }
        Command::Weight {
            op:
                WeightOp::Set {
                    vip,
                    backend,
                    weight,
                    guard,
                    json,
                },
        } => change(&socket, guard, json, Path::new(""), |guarded| {
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
        } => change(&socket, guard, json, Path::new(""), |guarded| {
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
        } => change(&socket, guard, json, Path::new(""), |guarded| {
            Request::Rollback {
                generation,
                last_good,
                guarded,
            }
        }),
        Command::Status { json } => {
            let r = ok(call(&socket, &Request::Status)?)?;
            if json {
                print_json(&r.data)?;
            } else {
                print_status(&r.data)?;
            }
            Ok(0)
        }
        Command::Stats {
            json,
            watch,
            interval,
            count,
        } => {
            let mut n = 0u64;
            loop {
                let r = ok(call(&socket, &Request::Stats)?)?;
                if json {
                    say!(
                        "{}",
                        serde_json::to_string(&r.data).map_err(|e| e.to_string())?
                    );
                } else {
                    print_stats(&r.data)?;
                }
                n += 1;
                if !watch || (count > 0 && n >= count) {
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_secs_f64(interval.max(0.1)));
            }
        }
        Command::History { json, all } => {
            let r = ok(call(&socket, &Request::History { all })?)?;
            let (records, attempts): (Vec<Record>, Vec<Attempt>) = if all {
                (
                    serde_json::from_value(r.data["records"].clone()).map_err(|e| e.to_string())?,
                    serde_json::from_value(r.data["attempts"].clone())
                        .map_err(|e| e.to_string())?,
                )
            } else {
                (
                    serde_json::from_value(r.data).map_err(|e| e.to_string())?,
                    Vec::new(),
                )
            };
            if json {
                if all {
                    print_json(&serde_json::json!({"records": records, "attempts": attempts}))?;
                } else {
                    print_json(&records)?;
                }
            } else {
                print_history(records, attempts);
            }
            Ok(0)
        }
        Command::Export => {
            let r = ok(call(&socket, &Request::Export)?)?;
            say!(
                "# xlb export: the running generation {} as a config file",
                r.data["generation"]
            );
            say!(
                "{}",
                r.data["config"].as_str().unwrap_or_default().trim_end()
            );
            Ok(0)
        }
        Command::Explain { vip, client, json } => {
            let r = ok(call(&socket, &Request::Explain { vip, client })?)?;
            let e: Explain = serde_json::from_value(r.data).map_err(|e| e.to_string())?;
            if json {
                print_json(&e)?;
            } else if e.why == "flow-entry" {
                say!(
                    "{} -> vip {}: backend {} (id {}), from its flow entry (chosen by generation {})",
                    e.client,
                    e.vip,
                    e.backend,
                    e.backend_id,
                    e.generation
                );
            } else {
                say!(
                    "{} -> vip {}: backend {} (id {}), new flow: hash {:#010x} -> slot {} of generation {}'s table",
                    e.client,
                    e.vip,
                    e.backend,
                    e.backend_id,
                    e.hash.unwrap_or(0),
                    e.slot.unwrap_or(0),
                    e.generation
                );
            }
            Ok(0)
        }
        Command::Teardown { pin_dir } => teardown(&socket, pin_dir),
    }
}

/// Through the daemon when one answers on `socket`; otherwise only the pin directory the
/// operator names, never a default.
fn teardown(socket: &Path, pin_dir: Option<PathBuf>) -> Result<u8, String> {
    let report = match (api::call(socket, &Request::Teardown), pin_dir) {
        (Ok(r), _) => ok(r)?.data,
        (Err(e), None) => {
            return Err(format!(
                "{e}\nnothing was torn down: without a daemon, name the pin directory to tear \
                 down with --pin-dir (the daemon.pin_dir of the load balancer to remove)"
            ));
        }
        (Err(e), Some(dir)) => {
            // A daemon that holds the directory is running: only its socket may tear it
            // down, or it would go on answering for a data plane that is gone.
            let _lock = xlb::lock::for_teardown(&dir).map_err(|l| {
                format!(
                    "{l}\nnothing was torn down: {e}\nthat daemon is running: tear down \
                     through its socket (xlb --socket SOCKET teardown), or stop it first"
                )
            })?;
            serde_json::to_value(loader::teardown(&dir).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?
        }
    };
    let report: loader::Teardown = serde_json::from_value(report).map_err(|e| e.to_string())?;
    say!("{report}");
    Ok(0)
}

/// Sends a changing request built with `guard`'s options and prints its outcome.
fn change(
    socket: &Path,
    guard: GuardArgs,
    json: bool,
    file: &Path,
    request: impl FnOnce(Guarded) -> Request,
) -> Result<u8, String> {
    let dry_run = guard.dry_run;
    if let (Some(w), false) = (guard.watch, dry_run) {
        eprintln!(
            "xlb: the change is watched for {} once applied; the answer comes when the \
             window ends (`xlb status` shows the watch meanwhile)",
            humantime::format_duration(w)
        );
    }
    apply_result(call(socket, &request(guard.into()))?, json, dry_run, file)
}

/// The text of config file `path` (the daemon parses it) and its absolute path.
fn read_config(path: &Path) -> Result<(String, PathBuf), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Ok((
        text,
        std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    ))
}

fn ok(r: Response) -> Result<Response, String> {
    if r.ok { Ok(r) } else { Err(r.error) }
}

fn validate(file: &Path, json: bool, strict: bool) -> Result<u8, String> {
    let config = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            if json {
                print_json(&serde_json::json!({
                    "file": file, "valid": false, "error": e.to_string()
                }))?;
            } else {
                eprintln!("xlb: {e}");
            }
            return Ok(ERROR);
        }
    };
    let mut plan = guard::plan(&config, None, &guard::Health::new(), &Maglev);
    if strict {
        plan.violations
            .extend(guard::policy::looser_than_defaults(&config));
    }
    let valid = plan.violations.is_empty();
    if json {
        print_json(&serde_json::json!({
            "file": file, "valid": valid, "violations": plan.violations, "vips": plan.vips
        }))?;
    } else {
        print_violations(&plan.violations, file);
        if valid {
            say!(
                "{}: valid ({} VIPs, {} backends)",
                file.display(),
                config.vips.len(),
                config.vips.iter().map(|v| v.backends.len()).sum::<usize>()
            );
        }
    }
    Ok(if valid { 0 } else { REJECTED })
}

fn print_violations(violations: &[Violation], file: &Path) {
    for v in violations {
        say!("{}", v.located(file));
    }
}

fn apply_result(r: Response, json: bool, dry: bool, file: &Path) -> Result<u8, String> {
    if json {
        print_json(&r)?;
        return Ok(if r.ok {
            0
        } else if r.violations.is_empty() {
            ERROR
        } else {
            REJECTED
        });
    }
    if let Some(plan) = &r.plan {
        print_plan(plan);
    }
    if !r.violations.is_empty() {
        say!();
        for v in &r.violations {
            match v.line {
                Some(_) if !file.as_os_str().is_empty() => say!("{}", v.located(file)),
                _ => say!("{v}"),
            }
        }
    }
    if let Some(w) = &r.watch {
        let window = humantime::format_duration(std::time::Duration::from_millis(w.window_ms));
        match w.outcome {
            WatchOutcome::Passed => say!(
                "applied as generation {}; watched {window}: no breach",
                w.generation
            ),
            WatchOutcome::Superseded | WatchOutcome::Aborted => say!(
                "applied as generation {}; watch ended early: {}",
                w.generation,
                w.detail
            ),
            WatchOutcome::Breached => {
                eprintln!("xlb: ROLLED BACK: {}", r.error);
                return Ok(ROLLED_BACK);
            }
        }
        return Ok(0);
    }
    if !r.ok {
        eprintln!("xlb: {}", r.error);
        return Ok(if r.violations.is_empty() {
            ERROR
        } else {
            REJECTED
        });
    }
    match (dry, r.generation) {
        (true, _) => say!("dry run: nothing was changed"),
        (false, Some(g)) => say!("applied as generation {g}"),
        (false, None) => say!("nothing to change"),
    }
    Ok(0)
}

/// Prints a rollout's state (or a refusal); exit 4 when it rolled back or was aborted.
fn rollout_result(r: Response, json: bool, dry: bool, file: &Path) -> Result<u8, String> {
    if json {
        print_json(&r)?;
    } else if !r.violations.is_empty() || (dry && r.ok) {
        if dry && r.ok {
            say!(
                "{} steps; largest share of flows moved per step: {}",
                r.data["steps"],
                r.data["moved"]
                    .as_array()
                    .map(|m| m
                        .iter()
                        .map(|x| pct(x.as_f64().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            );
            say!("dry run: nothing was changed");
        }
        print_violations(&r.violations, file);
    } else if r.data.is_object() {
        let s = &r.data;
        say!(
            "rollout to {}: {} (step {} of {}, each watched {}, from generation {}; generations {})",
            s["target"].as_str().unwrap_or("-"),
            s["outcome"].as_str().unwrap_or("-"),
            s["step"],
            s["steps"],
            humantime::format_duration(std::time::Duration::from_millis(
                s["interval_ms"].as_u64().unwrap_or(0)
            )),
            s["from"],
            s["generations"]
                .as_array()
                .map(|g| g
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        if let Some(d) = s["detail"].as_str() {
            say!("  {d}");
        }
    }
    if r.ok {
        return Ok(0);
    }
    if !json {
        eprintln!("xlb: {}", r.error);
    }
    Ok(if !r.violations.is_empty() {
        REJECTED
    } else if r.data.is_object() {
        ROLLED_BACK
    } else {
        ERROR
    })
}

fn print_history(records: Vec<Record>, attempts: Vec<Attempt>) {
    say!(
        "{:>5}  {:<20}  {:<10}  {:<5}  {:<30}  REASON",
        "GEN",
        "TIME (UTC)",
        "USER",
        "FORCE",
        "SOURCE"
    );
    // Oldest first; an attempt stands right after the generation that was running then.
    let mut lines: Vec<((u64, u8, u64), String)> = records
        .into_iter()
        .map(|r| {
            let waived: Vec<&str> = r.waived.iter().map(|v| v.rule.id()).collect();
            let reason = match (r.reason, waived.is_empty()) {
                (Some(reason), false) => format!("{reason} (overrode {})", waived.join(", ")),
                (reason, _) => reason.unwrap_or_default(),
            };
            (
                (r.generation, 0, r.time),
                format!(
                    "{:>5}  {:<20}  {:<10}  {:<5}  {:<30}  {reason}",
                    r.generation,
                    utc(r.time),
                    r.user,
                    if r.force { "yes" } else { "" },
                    r.source.to_string(),
                ),
            )
        })
        .collect();
    lines.extend(attempts.into_iter().map(|a| {
        let rules: Vec<&str> = a.violations.iter().map(|v| v.rule.id()).collect();
        (
            (a.running, 1, a.time),
            format!(
                "{:>5}  {:<20}  {:<10}  {:<5}  {:<30}  {}: {}",
                "-",
                utc(a.time),
                a.user,
                if a.force { "yes" } else { "" },
                a.source.to_string(),
                a.outcome.to_uppercase(),
                if rules.is_empty() {
                    a.error
                } else {
                    rules.join(", ")
                }
            ),
        )
    }));
    lines.sort_by_key(|(k, _)| *k);
    for (_, line) in lines {
        say!("{line}");
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn print_plan(plan: &Plan) {
    for g in &plan.global {
        say!("global: {g}");
    }
    for w in &plan.warnings {
        say!("warning: {w}");
    }
    for r in &plan.restart {
        say!("needs a restart (not applied by this change): {r}");
    }
    for v in &plan.vips {
        let change = match v.change {
            Change::Added => "added",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
        };
        say!(
            "vip {} [{change}], new flows moving: {}",
            v.label,
            pct(v.moved)
        );
        for d in &v.details {
            say!("  {d}");
        }
        say!(
            "  {:<20} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "BACKEND",
            "WEIGHT",
            "->",
            "SHARE",
            "->",
            "MOVING"
        );
        let w = |x: Option<u32>| x.map_or("-".to_string(), |x| x.to_string());
        for row in &v.rows {
            say!(
                "  {:<20} {:>8} {:>8} {:>9} {:>9} {:>9}",
                row.backend,
                w(row.weight_before),
                w(row.weight_after),
                pct(row.share_before),
                pct(row.share_after),
                pct(row.moved)
            );
        }
    }
}

fn vips(data: &serde_json::Value) -> Result<Vec<VipStatsView>, String> {
    serde_json::from_value(data["vips"].clone()).map_err(|e| e.to_string())
}

/// `field` of the daemon's last one-second rates for `backend` of `vip` (0 if none yet).
fn rate(data: &serde_json::Value, vip: &str, backend: &str, field: &str) -> f64 {
    data["rates"]
        .as_array()
        .and_then(|rates| {
            rates
                .iter()
                .find(|r| r["vip"] == vip && r["backend"] == backend)
        })
        .and_then(|r| r["rates"][field].as_f64())
        .unwrap_or(0.0)
}

/// Each backend's observed share of new flows: over the daemon's last one-second sample
/// when that saw new flows (so a bad change shows within seconds), else since the
/// counters started.
/// Each backend's observed share of new flows over the daemon's observation window
/// (the running watch's, else the last 60 s), and a note when there were too few flows
/// for a share to mean anything.
fn observed_shares(data: &serde_json::Value, v: &VipStatsView) -> (Vec<String>, Option<String>) {
    let o = &data["observed"][&v.vip];
    let flows = o["flows"].as_u64().unwrap_or(0);
    let shares: Vec<String> = v
        .backends
        .iter()
        .map(|b| o["shares"][&b.backend][0].as_f64().map_or("-".into(), pct))
        .collect();
    let note = o["shares"]
        .as_object()
        .is_none_or(|s| s.is_empty())
        .then(|| {
            format!(
                "observed share: {flows} new flows in the window, too few to mean anything \
                 ({} needed)",
                data["min_flows"]
            )
        });
    (shares, note)
}

fn print_status(data: &serde_json::Value) -> Result<(), String> {
    say!(
        "generation {}  interface {}  xdp {}",
        data["generation"],
        data["interface"].as_str().unwrap_or("-"),
        data["xdp_mode"].as_str().unwrap_or("-")
    );
    if let Some(w) = data["watch"].as_object() {
        let secs = |k: &str| w[k].as_u64().unwrap_or(0) / 1000;
        say!(
            "watching generation {}: {} s of {} s, rolled back by itself on a breach",
            w["generation"],
            secs("elapsed_ms"),
            secs("window_ms")
        );
    }
    for v in vips(data)? {
        let (observed, note) = observed_shares(data, &v);
        say!(
            "\nvip {} (id {}, table generation {})",
            v.label,
            v.id,
            v.generation
        );
        if let Some(p) = &v.panic {
            say!("  {}", p.message());
        }
        if let Some(note) = note {
            say!("  {note}");
        }
        say!(
            "  {:<20} {:<16} {:<30} {:>8} {:>9} {:<16} {:>11} {:>14}",
            "BACKEND",
            "ADDRESS",
            "MAC",
            "WEIGHT",
            "EFFECTIVE",
            "HEALTH",
            "TABLE SHARE",
            "OBSERVED SHARE"
        );
        for (b, observed) in v.backends.iter().zip(&observed) {
            let health = match (b.healthy, &b.held) {
                (Some(true), Some(h)) if h.starts_with("slow start") => h.clone(),
                (Some(true), _) => "up".into(),
                // Down and still in the table: the VIP is in panic.
                (Some(false), None) if v.panic.is_some() && b.weight > 0 => "DOWN (kept)".into(),
                (Some(false), _) => "DOWN".into(),
                (None, _) => "-".into(),
            };
            let mac = match &b.mac {
                Some(mac) => format!("{mac} ({})", b.mac_source),
                None => "UNRESOLVED: no slot".into(),
            };
            say!(
                "  {:<20} {:<16} {:<30} {:>8} {:>9} {:<16} {:>11} {:>14}",
                b.backend,
                b.address,
                mac,
                b.weight,
                b.effective_weight,
                health,
                pct(b.table_share),
                observed
            );
            if let (Some(false), Some(probe)) = (b.healthy, &b.last_probe) {
                say!("    last probe: {probe}");
            }
        }
    }
    Ok(())
}

fn print_stats(data: &serde_json::Value) -> Result<(), String> {
    for v in vips(data)? {
        let (observed, note) = observed_shares(data, &v);
        say!(
            "vip {}  packets {}  bytes {}  new flows {}  drops {}",
            v.label,
            v.packets,
            v.bytes,
            v.new_flows,
            v.drops
        );
        if let Some(note) = note {
            say!("  {note}");
        }
        say!(
            "  {:<20} {:>12} {:>14} {:>10} {:>10} {:>10} {:>8} {:>8}",
            "BACKEND",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "PKT/S",
            "FLOWS/S",
            "TABLE",
            "OBSERVED"
        );
        for (b, observed) in v.backends.iter().zip(&observed) {
            say!(
                "  {:<20} {:>12} {:>14} {:>10} {:>10.0} {:>10.1} {:>8} {:>8}",
                b.backend,
                b.packets,
                b.bytes,
                b.new_flows,
                rate(data, &v.vip, &b.backend, "packets_per_s"),
                rate(data, &v.vip, &b.backend, "new_flows_per_s"),
                pct(b.table_share),
                observed
            );
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (civil-from-days, no time zone database needed).
fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
