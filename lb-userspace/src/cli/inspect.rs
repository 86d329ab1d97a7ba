//! `xlb inspect`: the bpftool (and jq) commands that answer the common questions about
//! this host's data plane from its pinned maps alone, with or without a daemon. It runs
//! nothing; it prints commands for the pin directory given, to copy or to script.

use std::path::{Path, PathBuf};

/// Arguments of `xlb inspect`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The data plane's pin directory (`[daemon] pin_dir`).
    #[arg(long, default_value = xlb::dataplane::pins::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Fill in the one-backend command for VIP/BACKEND (otherwise it reads the shell
    /// variables VIP and BACKEND).
    #[arg(long, value_name = "VIP/BACKEND")]
    backend: Option<String>,
}

/// jq: sums a list of `{cpu, value}` over the CPUs, field by field.
const TOTAL: &str = "def total: reduce .[].value as $c ({}; reduce ($c | to_entries[]) as $f \
                     (.; .[$f.key] += $f.value));";

/// A jq one-liner that joins a name map with the per-CPU counters of the same ids and
/// prints one line per id: its key, its names and its counters summed over CPUs.
fn joined(dir: &Path, names: &str, stats: &str, args: &str, select: &str) -> String {
    let dump = |map: &str| format!("\"$(bpftool -j map dump pinned {}/{map})\"", dir.display());
    format!(
        "jq -nc{args} --argjson names {} --argjson stats {} '{TOTAL} ($stats | map({{key: \
         (.formatted.key | tostring), value: (.formatted.values | total)}}) | from_entries) \
         as $t | $names | map(.formatted) | sort_by(.key)[] | {{id: .key}} + .value + \
         $t[.key | tostring]{select}'",
        dump(names),
        dump(stats),
    )
}

/// Every command, with the question it answers.
pub(crate) fn commands(dir: &Path, backend: Option<(&str, &str)>) -> Vec<(&'static str, String)> {
    let d = dir.display();
    let one_backend_args = match backend {
        Some((vip, name)) => format!(" --arg vip '{vip}' --arg backend '{name}'"),
        None => " --arg vip \"$VIP\" --arg backend \"$BACKEND\"".into(),
    };
    vec![
        (
            "Which backend is which id (backend, VIP, address, VIP id)",
            format!("bpftool map dump pinned {d}/xlb_be_name"),
        ),
        (
            "Which VIP is which id (name, address:port/protocol, forwarding)",
            format!("bpftool map dump pinned {d}/xlb_vip_name"),
        ),
        (
            "Every backend's counters, summed over CPUs, one line each",
            joined(dir, "xlb_be_name", "xlb_be_stats", "", ""),
        ),
        (
            "One backend's counters, summed over CPUs",
            joined(
                dir,
                "xlb_be_name",
                "xlb_be_stats",
                &one_backend_args,
                " | select(.vip == $vip and .backend == $backend)",
            ),
        ),
        (
            "Every VIP's counters (drops: no live backend), summed over CPUs",
            joined(dir, "xlb_vip_name", "xlb_vip_stats", "", ""),
        ),
        (
            "Every verdict reason's packets and bytes, summed over CPUs",
            joined(dir, "xlb_reason_name", "xlb_reasons", "", ""),
        ),
        (
            "How full the flow table is",
            format!(
                "echo \"$(bpftool -j map dump pinned {d}/xlb_flows | jq length) of \
                 $(bpftool -j map show pinned {d}/xlb_flows | jq .max_entries) flow entries\""
            ),
        ),
        (
            "The attachment: interface, program and link",
            format!("bpftool link show pinned {d}/link"),
        ),
    ]
}

pub(crate) fn inspect(args: &Args) -> Result<u8, String> {
    let dir = args.pin_dir.to_string_lossy();
    if !dir
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        return Err(format!(
            "--pin-dir {dir:?}: the commands would need shell quoting; use a path of \
             letters, digits and / . _ -"
        ));
    }
    let backend = match &args.backend {
        Some(b) => Some(
            b.split_once('/')
                .ok_or_else(|| format!("--backend {b:?}: expected VIP/BACKEND, e.g. web/web-1"))?,
        ),
        None => None,
    };
    if let Some((vip, name)) = backend
        && [vip, name].iter().any(|s| s.contains('\''))
    {
        return Err(format!("--backend {vip}/{name}: names never contain '"));
    }
    for (what, command) in commands(&args.pin_dir, backend) {
        say!("# {what}\n{command}\n");
    }
    Ok(0)
}
