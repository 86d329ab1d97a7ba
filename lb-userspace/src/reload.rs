//! One source of truth across the config file, the CLI, reloads and restarts. The running
//! generation is the truth.
//! - A restart applies the daemon's config file only when it differs from the generation
//!   last applied *from that file*; otherwise it keeps the running generation, with the
//!   changes made since by other means (`weight set`, `drain`, `rollback`, `xlb apply` of
//!   another file).
//! - A SIGHUP asks for the file: it is refused, listing what it would undo, when applying
//!   it would undo such a change (also when the file itself is unchanged).
//! - Either way the file goes through the guardrails. `xlb apply FILE` is the explicit
//!   way to apply it over CLI changes.
//!
//! Pure: the daemon passes in the records.

use std::path::Path;

use crate::{
    config::{BackendSpec, Config, Vip},
    history::{Record, Source},
};

/// What made the daemon read its config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Reload,
}

/// What the config file asks for, against the running state.
#[derive(Clone, Debug, PartialEq)]
pub enum FileCheck {
    /// The file equals what was last applied from it (generation `since`): nothing to do;
    /// changes made since by the CLI stay.
    Unchanged { since: u64 },
    /// The file may be applied (through the guardrails).
    Apply,
    /// Applying the file would undo these changes made since it was last applied.
    WouldUndo(Vec<String>),
}

/// Whether `record` was applied from the daemon's config file `file`.
pub fn from_file(record: &Record, file: &Path) -> bool {
    match &record.source {
        Source::Startup { file: f } | Source::Reload { file: f } | Source::File { file: f } => {
            f == file
        }
        Source::Cli { .. }
        | Source::Rollback { .. }
        | Source::Neighbour { .. }
        | Source::Health { .. }
        | Source::AutoRollback { .. }
        | Source::Rollout { .. } => false,
    }
}

/// The VIP without its backends: what is compared for a VIP itself. (Every config here
/// went through `Config::without_lines` first.)
fn vip_shell(v: &Vip) -> Vip {
    Vip {
        backends: Vec::new(),
        ..v.clone()
    }
}

fn backend(v: Option<&Vip>, name: &str) -> Option<BackendSpec> {
    v?.backend(name).cloned()
}

/// The fields of `a` and `b` that differ, as `key value, ...` each (every field when one
/// side is absent): what an undo line shows.
fn differing<T: serde::Serialize>(a: Option<&T>, b: Option<&T>, sep: &str) -> (String, String) {
    let map = |v: Option<&T>| -> Option<serde_json::Map<String, serde_json::Value>> {
        match serde_json::to_value(v?) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => None,
        }
    };
    let (ma, mb) = (map(a), map(b));
    let show = |m: &Option<serde_json::Map<String, serde_json::Value>>,
                other: &Option<serde_json::Map<String, serde_json::Value>>| {
        let Some(m) = m else {
            return "absent".to_string();
        };
        m.iter()
            .filter(|(k, v)| other.as_ref().is_none_or(|o| o.get(*k) != Some(*v)))
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}{sep}{s}"),
                v => format!("{k}{sep}{v}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    (show(&ma, &mb), show(&mb, &ma))
}

/// A backend as an undo line shows it: what differs, in the order of its fields.
fn describe(a: &Option<BackendSpec>, b: &Option<BackendSpec>) -> (String, String) {
    let fields = |x: &Option<BackendSpec>| {
        x.as_ref()
            .map(|x| serde_json::json!({"weight": x.weight, "address": x.address, "mac": x.mac}))
    };
    let (fa, fb) = (fields(a), fields(b));
    differing(fa.as_ref(), fb.as_ref(), " ")
}

/// Checks the file's config `file` against the running record `running` and the last
/// record applied from the file, `last_file`.
pub fn check(
    trigger: Trigger,
    file: &Config,
    running: Option<&Record>,
    last_file: Option<&Record>,
) -> FileCheck {
    let Some(running) = running else {
        return FileCheck::Apply;
    };
    let file = file.without_lines();
    let base = last_file.map(|r| r.config.without_lines());
    let unchanged = last_file
        .zip(base.as_ref())
        .filter(|(_, base)| {
            base.vips == file.vips
                && base.guardrails == file.guardrails
                && base.rollout == file.rollout
                && base.allow_empty == file.allow_empty
                && base.daemon.table_size == file.daemon.table_size
        })
        .map(|(r, _)| FileCheck::Unchanged {
            since: r.generation,
        });
    if trigger == Trigger::Startup
        && let Some(unchanged) = unchanged
    {
        return unchanged;
    }
    let run = running.config.without_lines();
    let mut undo = Vec::new();
    // An item the running state changed since the file's last apply (every item, when no
    // generation came from the file) and that the file would now set otherwise.
    let mut item = |what: String, changed_since: bool, differs: bool, run: String, file: String| {
        if changed_since && differs {
            undo.push(format!("{what}: running {run}, the file says {file}"));
        }
    };
    let (run_policy, file_policy) = differing(Some(&run.guardrails), Some(&file.guardrails), " = ");
    item(
        "[guardrails]".into(),
        base.as_ref().is_none_or(|b| b.guardrails != run.guardrails),
        file.guardrails != run.guardrails,
        run_policy,
        file_policy,
    );
    let mut names: Vec<&str> = run.vips.iter().map(|v| v.name.as_str()).collect();
    names.extend(file.vips.iter().map(|v| v.name.as_str()));
    names.sort_unstable();
    names.dedup();
    for name in names {
        let find = |c: &Config| c.vips.iter().find(|v| v.name == name).cloned();
        let (b, r, f) = (base.as_ref().and_then(find), find(&run), find(&file));
        let shell = |v: &Option<Vip>| v.as_ref().map(vip_shell);
        let show = |v: &Option<Vip>| v.as_ref().map_or("absent".to_string(), Vip::label);
        item(
            format!("vip {name}"),
            base.is_none() || shell(&b) != shell(&r),
            shell(&f) != shell(&r),
            show(&r),
            show(&f),
        );
        let mut backends: Vec<String> = [&r, &f]
            .iter()
            .filter_map(|v| v.as_ref())
            .flat_map(|v| v.backends.iter().map(|b| b.name.clone()))
            .collect();
        backends.sort_unstable();
        backends.dedup();
        for be in backends {
            let (bb, rb, fb) = (
                backend(b.as_ref(), &be),
                backend(r.as_ref(), &be),
                backend(f.as_ref(), &be),
            );
            let (run_backend, file_backend) = describe(&rb, &fb);
            item(
                format!("vip {name} backend {be}"),
                base.is_none() || bb != rb,
                fb != rb,
                run_backend,
                file_backend,
            );
        }
    }
    match (undo.is_empty(), unchanged) {
        (false, _) => FileCheck::WouldUndo(undo),
        (true, Some(unchanged)) => unchanged,
        (true, None) => FileCheck::Apply,
    }
}

/// A client's name for its config file, fit for the history and logs: control
/// characters (terminal escapes) shown as `?`, at most 256 characters.
pub fn file_label(file: &Path) -> std::path::PathBuf {
    let text: String = file
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(256)
        .collect();
    text.into()
}

#[cfg(test)]
mod tests;
