//! The changing verbs (`diff`, `apply`, `weight set`, `drain`, `rollback`): the guard
//! options they share, the request, and the printed plan, violations and outcome.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use xlb::{
    api::{Guarded, Request, Response},
    guard::{Change, Plan, Violation},
    history::WatchOutcome,
};

use super::{
    call,
    output::{DIFFERS, ERROR, REJECTED, ROLLED_BACK, pct, print_json},
    rollout::{Steps, rollout_result},
};

#[derive(clap::Args, Clone)]
pub struct GuardArgs {
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
pub(crate) enum WeightOp {
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

/// `xlb diff`: a dry-run apply of `file`; with `exit_code`, exit 3 when something differs.
pub(crate) fn diff(socket: &Path, file: &Path, json: bool, exit_code: bool) -> Result<u8, String> {
    let (text, file) = read_config(file)?;
    let r = call(
        socket,
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

/// `xlb apply`: at once, or with `steps` and `interval` as a stepped rollout.
pub(crate) fn apply(
    socket: &Path,
    file: &Path,
    guard: GuardArgs,
    steps: Option<Steps>,
    interval: Option<std::time::Duration>,
    json: bool,
) -> Result<u8, String> {
    let (text, file) = read_config(file)?;
    let label = file.clone();
    match (steps, interval) {
        (Some(steps), Some(interval)) => {
            let steps = match steps {
                Steps::Auto => None,
                Steps::N(n) => Some(n),
            };
            let interval_ms = interval.as_millis() as u64;
            let r = call(
                socket,
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
        _ => change(socket, guard, json, &label, |guarded| Request::Apply {
            text,
            file,
            guarded,
        }),
    }
}

/// Sends a changing request built with `guard`'s options and prints its outcome.
pub(crate) fn change(
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

pub(crate) fn print_violations(violations: &[Violation], file: &Path) {
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

pub(crate) fn print_plan(plan: &Plan) {
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
