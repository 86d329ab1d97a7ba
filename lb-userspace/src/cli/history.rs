//! `xlb history` (applied generations and, with `--all`, the attempts) and `xlb export`
//! (the running generation as a config file).

use std::path::Path;

use xlb::{
    api::Request,
    history::{Attempt, Record},
};

use super::{
    call, ok,
    output::{print_json, utc},
};

pub(crate) fn history(socket: &Path, json: bool, all: bool) -> Result<u8, String> {
    let r = ok(call(socket, &Request::History { all })?)?;
    let (records, attempts): (Vec<Record>, Vec<Attempt>) = if all {
        (
            serde_json::from_value(r.data["records"].clone()).map_err(|e| e.to_string())?,
            serde_json::from_value(r.data["attempts"].clone()).map_err(|e| e.to_string())?,
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

pub(crate) fn export(socket: &Path) -> Result<u8, String> {
    let r = ok(call(socket, &Request::Export)?)?;
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
