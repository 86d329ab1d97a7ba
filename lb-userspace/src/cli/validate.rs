//! `xlb validate` and `xlb diff --against`: configs checked offline, without a daemon
//! (and without the XDP program: both work in a build without the `bpf` feature).

use std::path::Path;

use xlb::{
    config,
    guard::{self, Maglev},
};

use super::{
    change::{print_plan, print_violations},
    output::{DIFFERS, ERROR, REJECTED, print_json},
};

pub(crate) fn validate(file: &Path, json: bool, strict: bool) -> Result<u8, String> {
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

/// `xlb diff FILE --against EXPORTED`: the plan of applying `file` to a daemon running
/// `exported` (from `xlb export`), with every backend up: the per-backend weights, table
/// shares and flows moving, and every guardrail violation, as the daemon would compute
/// them. Exit 1 with violations; with `exit_code`, 3 when something differs.
pub(crate) fn diff_against(
    file: &Path,
    exported: &Path,
    json: bool,
    exit_code: bool,
) -> Result<u8, String> {
    let load = |path: &Path| config::load(path).map_err(|e| e.to_string());
    let (desired, running) = match (load(file), load(exported)) {
        (Ok(d), Ok(r)) => (d, r),
        (Err(e), _) | (_, Err(e)) => {
            if json {
                print_json(&serde_json::json!({ "file": file, "ok": false, "error": e }))?;
            } else {
                eprintln!("xlb: {e}");
            }
            return Ok(ERROR);
        }
    };
    let mut plan = guard::plan(&desired, Some(&running), &guard::Health::new(), &Maglev);
    plan.restart = running.daemon.differences(&desired.daemon);
    let differs = !plan.is_noop() || !plan.restart.is_empty();
    let valid = plan.violations.is_empty();
    if json {
        print_json(&serde_json::json!({
            "file": file, "against": exported, "ok": valid, "differs": differs, "plan": plan
        }))?;
    } else {
        print_plan(&plan);
        if !valid {
            say!();
            print_violations(&plan.violations, file);
        }
        if !differs {
            say!(
                "{}: no difference from {}",
                file.display(),
                exported.display()
            );
        }
    }
    Ok(if !valid {
        REJECTED
    } else if exit_code && differs {
        DIFFERS
    } else {
        0
    })
}
