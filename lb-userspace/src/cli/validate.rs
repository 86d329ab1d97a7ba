//! `xlb validate`: a config checked offline, without a daemon.

use std::path::Path;

use xlb::{
    config,
    guard::{self, Maglev},
};

use super::{
    change::print_violations,
    output::{ERROR, REJECTED, print_json},
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
