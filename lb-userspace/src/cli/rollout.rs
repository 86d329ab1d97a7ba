//! `xlb rollout status|abort` and the `--steps` of `xlb apply`: parsing the step count and
//! printing a rollout's state.

use std::path::Path;

use clap::Subcommand;
use xlb::api::{Request, Response};

use super::{
    call,
    change::print_violations,
    output::{ERROR, REJECTED, ROLLED_BACK, pct, print_json},
};

#[derive(Subcommand)]
pub(crate) enum RolloutOp {
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
pub(crate) enum Steps {
    Auto,
    N(u32),
}

pub(crate) fn parse_steps(s: &str) -> Result<Steps, String> {
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

/// `xlb rollout status` and `xlb rollout abort`.
pub(crate) fn rollout(socket: &Path, op: RolloutOp) -> Result<u8, String> {
    let (req, json) = match op {
        RolloutOp::Status { json } => (Request::RolloutStatus, json),
        RolloutOp::Abort { json } => (Request::RolloutAbort, json),
    };
    rollout_result(call(socket, &req)?, json, false, Path::new(""))
}

/// Prints a rollout's state (or a refusal); exit 4 when it rolled back or was aborted.
pub(crate) fn rollout_result(
    r: Response,
    json: bool,
    dry: bool,
    file: &Path,
) -> Result<u8, String> {
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
