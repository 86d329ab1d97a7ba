//! `xlb`: the daemon (`xlb run`) and the CLI that talks to it. `validate` works offline.
//! Exit codes: 0 success, 1 rejected by guardrails (or violations found), 2 anything
//! else: unreadable or unparsable input, daemon unreachable, kernel errors.

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
    dataplane::{loader, pins::DEFAULT_PIN_DIR},
    guard::{self, Change, Maglev, Plan, Violation},
    history::Record,
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
}

impl From<GuardArgs> for Guarded {
    fn from(a: GuardArgs) -> Self {
        Guarded {
            dry_run: a.dry_run,
            force: a.force,
            reason: a.reason,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach XDP, apply the config, serve the CLI.
    Run {
        #[arg(long, default_value = "/etc/xlb/xlb.toml")]
        config: PathBuf,
    },
    /// Check a config offline. Exit 0 valid, 1 violations, 2 unreadable or unparsable.
    Validate {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show what applying FILE would change, and every violation.
    Diff {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Apply FILE's VIPs and guardrail policy through the guardrails.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        guard: GuardArgs,
        #[arg(long)]
        json: bool,
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
        #[arg(long)]
        json: bool,
    },
    /// VIPs, backends, weights, health, table and observed shares, generation.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Per-backend packets, bytes, new flows and rates.
    Stats {
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
        #[arg(long)]
        json: bool,
    },
    /// Re-apply an earlier generation (default: the one before the current).
    Rollback {
        generation: Option<u64>,
        #[command(flatten)]
        guard: GuardArgs,
        #[arg(long)]
        json: bool,
    },
    /// Which backend a client's flow gets, and why.
    Explain {
        vip: String,
        /// CLIENT_IP:PORT, e.g. 198.18.0.1:40000 or [2001:db8::1]:40000.
        client: String,
        #[arg(long)]
        json: bool,
    },
    /// Detach XDP and unpin everything (stops a running daemon too).
    Teardown {
        /// Used when no daemon answers.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
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
        #[arg(long)]
        json: bool,
    },
}

const REJECTED: u8 = 1;
const ERROR: u8 = 2;

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
    println!(
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
        Command::Run { config } => {
            xlb::daemon::run(&config).map_err(|e| format!("{e:#}"))?;
            Ok(0)
        }
        Command::Validate { file, json } => validate(&file, json),
        Command::Diff { file, json } => {
            let config = config::load(&file).map_err(|e| e.to_string())?;
            let r = call(
                &socket,
                &Request::Apply {
                    config,
                    file: absolute(&file),
                    guarded: Guarded {
                        dry_run: true,
                        ..Guarded::default()
                    },
                },
            )?;
            apply_result(r, json, true)
        }
        Command::Apply { file, guard, json } => {
            let config = config::load(&file).map_err(|e| e.to_string())?;
            let file = absolute(&file);
            change(&socket, guard, json, |guarded| Request::Apply {
                config,
                file,
                guarded,
            })
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
        } => change(&socket, guard, json, |guarded| Request::WeightSet {
            command: format!("weight set {vip} {backend} {weight}"),
            vip,
            backend,
            weight,
            guarded,
        }),
        Command::Drain {
            vip,
            backend,
            guard,
            json,
        } => change(&socket, guard, json, |guarded| Request::WeightSet {
            command: format!("drain {vip} {backend}"),
            vip,
            backend,
            weight: 0,
            guarded,
        }),
        Command::Rollback {
            generation,
            guard,
            json,
        } => change(&socket, guard, json, |guarded| Request::Rollback {
            generation,
            guarded,
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
                    println!(
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
        Command::History { json } => {
            let r = ok(call(&socket, &Request::History)?)?;
            let records: Vec<Record> = serde_json::from_value(r.data).map_err(|e| e.to_string())?;
            if json {
                print_json(&records)?;
            } else {
                println!(
                    "{:>5}  {:<20}  {:<10}  {:<5}  {:<30}  reason",
                    "GEN", "TIME (UTC)", "USER", "FORCE", "SOURCE"
                );
                for r in records {
                    println!(
                        "{:>5}  {:<20}  {:<10}  {:<5}  {:<30}  {}",
                        r.generation,
                        utc(r.time),
                        r.user,
                        if r.force { "yes" } else { "" },
                        r.source.to_string(),
                        r.reason.unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Explain { vip, client, json } => {
            let r = ok(call(&socket, &Request::Explain { vip, client })?)?;
            let e: Explain = serde_json::from_value(r.data).map_err(|e| e.to_string())?;
            if json {
                print_json(&e)?;
            } else if e.why == "flow-entry" {
                println!(
                    "{} -> vip {}: backend {} (id {}), from its flow entry (chosen by generation {})",
                    e.client, e.vip, e.backend, e.backend_id, e.generation
                );
            } else {
                println!(
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
        Command::Teardown { pin_dir } => {
            let removed = match api::call(&socket, &Request::Teardown) {
                Ok(r) => ok(r)?.data,
                // No daemon: unpin directly.
                Err(_) => {
                    serde_json::to_value(loader::teardown(&pin_dir).map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?
                }
            };
            let n = removed.as_array().map_or(0, Vec::len);
            println!("removed {n} pinned objects; XDP is detached");
            Ok(0)
        }
    }
}

/// Sends a changing request built with `guard`'s options and prints its outcome.
fn change(
    socket: &Path,
    guard: GuardArgs,
    json: bool,
    request: impl FnOnce(Guarded) -> Request,
) -> Result<u8, String> {
    let dry_run = guard.dry_run;
    apply_result(call(socket, &request(guard.into()))?, json, dry_run)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn ok(r: Response) -> Result<Response, String> {
    if r.ok { Ok(r) } else { Err(r.error) }
}

fn validate(file: &Path, json: bool) -> Result<u8, String> {
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
    let plan = guard::plan(&config, None, &guard::Health::new(), &Maglev);
    let valid = plan.violations.is_empty();
    if json {
        print_json(&serde_json::json!({
            "file": file, "valid": valid, "violations": plan.violations, "vips": plan.vips
        }))?;
    } else {
        print_violations(&plan.violations, file);
        if valid {
            println!(
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
        println!("{}: {v}", file.display());
    }
}

fn apply_result(r: Response, json: bool, dry: bool) -> Result<u8, String> {
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
        println!();
        for v in &r.violations {
            println!("{v}");
        }
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
        (true, _) => println!("dry run: nothing was changed"),
        (false, Some(g)) => println!("applied as generation {g}"),
        (false, None) => println!("nothing to change"),
    }
    Ok(0)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn print_plan(plan: &Plan) {
    for v in &plan.vips {
        let change = match v.change {
            Change::Added => "added",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
        };
        println!(
            "vip {} [{change}], new flows moving: {}",
            v.label,
            pct(v.moved)
        );
        println!(
            "  {:<20} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "BACKEND", "WEIGHT", "->", "SHARE", "->", "MOVING"
        );
        let w = |x: Option<u32>| x.map_or("-".to_string(), |x| x.to_string());
        for row in &v.rows {
            println!(
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
fn observed_shares(data: &serde_json::Value, v: &VipStatsView) -> Vec<String> {
    let recent: Vec<f64> = v
        .backends
        .iter()
        .map(|b| rate(data, &v.vip, &b.backend, "new_flows_per_s"))
        .collect();
    let recent_total: f64 = recent.iter().sum();
    let total: u64 = v.backends.iter().map(|b| b.new_flows).sum();
    if recent_total > 0.0 {
        recent.iter().map(|r| pct(r / recent_total)).collect()
    } else if total > 0 {
        v.backends
            .iter()
            .map(|b| pct(b.new_flows as f64 / total as f64))
            .collect()
    } else {
        vec!["-".into(); v.backends.len()]
    }
}

fn print_status(data: &serde_json::Value) -> Result<(), String> {
    println!(
        "generation {}  interface {}  xdp {}",
        data["generation"],
        data["interface"].as_str().unwrap_or("-"),
        data["xdp_mode"].as_str().unwrap_or("-")
    );
    for v in vips(data)? {
        let observed = observed_shares(data, &v);
        println!(
            "\nvip {} (id {}, table generation {})",
            v.label, v.id, v.generation
        );
        println!(
            "  {:<20} {:<16} {:>8} {:>8} {:>11} {:>14}",
            "BACKEND", "ADDRESS", "WEIGHT", "HEALTH", "TABLE SHARE", "OBSERVED SHARE"
        );
        for (b, observed) in v.backends.iter().zip(&observed) {
            let health = match b.healthy {
                Some(true) => "up",
                Some(false) => "DOWN",
                None => "-",
            };
            println!(
                "  {:<20} {:<16} {:>8} {:>8} {:>11} {:>14}",
                b.backend,
                b.address,
                b.weight,
                health,
                pct(b.table_share),
                observed
            );
        }
    }
    Ok(())
}

fn print_stats(data: &serde_json::Value) -> Result<(), String> {
    for v in vips(data)? {
        let observed = observed_shares(data, &v);
        println!(
            "vip {}  packets {}  bytes {}  new flows {}  drops {}",
            v.label, v.packets, v.bytes, v.new_flows, v.drops
        );
        println!(
            "  {:<20} {:>12} {:>14} {:>10} {:>10} {:>10} {:>8} {:>8}",
            "BACKEND", "PACKETS", "BYTES", "NEW FLOWS", "PKT/S", "FLOWS/S", "TABLE", "OBSERVED"
        );
        for (b, observed) in v.backends.iter().zip(&observed) {
            println!(
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
