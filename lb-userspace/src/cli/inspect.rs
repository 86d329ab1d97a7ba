//! `xlb inspect`: the bpftool (and jq) commands that answer the common questions about
//! this host's data plane from its pinned maps alone, with or without a daemon. It runs
//! none of them; it checks that the pins are there (and the backend it is asked about)
//! and prints the commands, to copy or to script.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData};
use xlb::dataplane::{
    names::{BACKEND_NAMES, BackendName},
    pins,
};

/// Arguments of `xlb inspect`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The data plane's pin directory (`[daemon] pin_dir`; default /sys/fs/bpf/xlb).
    #[arg(long, conflicts_with = "config")]
    pin_dir: Option<PathBuf>,
    /// Take the pin directory from this config file's [daemon] pin_dir.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Fill in the one-backend command for VIP/BACKEND (otherwise it reads the shell
    /// variables VIP and BACKEND).
    #[arg(long, value_name = "VIP/BACKEND")]
    backend: Option<String>,
    /// Print the commands without checking the pins (for another host).
    #[arg(long)]
    no_check: bool,
}

/// jq: sums a list of `{cpu, value}` over the CPUs, field by field.
const TOTAL: &str = "def total: reduce .[].value as $c ({}; reduce ($c | to_entries[]) as $f \
                     (.; .[$f.key] += $f.value));";

/// A command that joins a name map with the per-CPU counters of the same ids and prints
/// one line per id: its key, its names and its counters summed over CPUs. Both dumps go
/// to jq on its standard input (as arguments they would outgrow the kernel's limit of
/// 128 KiB per argument at a few hundred ids).
fn joined(dir: &str, names: &str, stats: &str, args: &str, select: &str) -> String {
    format!(
        "{{ bpftool -j map dump pinned {dir}/{names}; bpftool -j map dump pinned \
         {dir}/{stats}; }} | jq -sc{args} '{TOTAL} .[0] as $names | (.[1] | map({{key: \
         (.formatted.key | tostring), value: (.formatted.values | total)}}) | from_entries) \
         as $t | $names | map(.formatted) | sort_by(.key)[] | {{id: .key}} + .value + \
         $t[.key | tostring]{select}'"
    )
}

/// Every command, with the question it answers.
pub(crate) fn commands(dir: &str, backend: Option<(&str, &str)>) -> Vec<(&'static str, String)> {
    let one_backend_args = match backend {
        Some((vip, name)) => format!("e --arg vip '{vip}' --arg backend '{name}'"),
        None => "e --arg vip \"$VIP\" --arg backend \"$BACKEND\"".into(),
    };
    vec![
        (
            "Which backend is which id (backend, VIP, address, VIP id)",
            format!("bpftool map dump pinned {dir}/xlb_be_name"),
        ),
        (
            "Which VIP is which id (name, address:port/protocol, forwarding)",
            format!("bpftool map dump pinned {dir}/xlb_vip_name"),
        ),
        (
            "Every backend's counters, summed over CPUs, one line each",
            joined(dir, "xlb_be_name", "xlb_be_stats", "", ""),
        ),
        (
            "One backend's counters, summed over CPUs (exit status 4: no such backend)",
            joined(
                dir,
                "xlb_be_name",
                "xlb_be_stats",
                &one_backend_args,
                " | select(.vip == $vip and .backend == $backend)",
            ),
        ),
        (
            "Every VIP's counters, summed over CPUs (removed backends' traffic included; \
             drops: no live backend, or an ipip packet that could not be sent)",
            joined(dir, "xlb_vip_name", "xlb_vip_stats", "", ""),
        ),
        (
            "Every verdict reason's packets and bytes, summed over CPUs",
            joined(dir, "xlb_reason_name", "xlb_reasons", "", ""),
        ),
        (
            "Flow table entries and capacity (only flows in slots a change moved have one; \
             idle ones are deleted after flow_idle_timeout; this reads the whole table)",
            format!(
                "echo \"$(bpftool -j map dump pinned {dir}/xlb_flows | jq length) of \
                 $(bpftool -j map show pinned {dir}/xlb_flows | jq .max_entries) flow entries\""
            ),
        ),
        (
            "Flow table inserts, and inserts refused for a full table or by the flood guard, \
             summed over CPUs",
            format!(
                "bpftool -j map dump pinned {dir}/xlb_flow_stats | jq -c '{TOTAL} .[0].formatted.values \
                 | total | {{inserts, refused_full, refused_rate}}'"
            ),
        ),
        (
            "The XDP link and its program (`bpftool net show`, in the interface's network \
             namespace, names the interface)",
            format!("bpftool link show pinned {dir}/link"),
        ),
    ]
}

/// A VIP or backend name as the config allows it (so it needs no shell quoting).
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The pin directory the arguments name.
fn pin_dir(args: &Args) -> Result<PathBuf, String> {
    if let Some(dir) = &args.pin_dir {
        return Ok(dir.clone());
    }
    match &args.config {
        Some(path) => xlb::config::load(path)
            .map(|c| c.daemon.pin_dir)
            .map_err(|e| e.to_string()),
        None => Ok(PathBuf::from(pins::DEFAULT_PIN_DIR)),
    }
}

/// Every (VIP, backend) the pinned `xlb_be_name` names.
fn pinned_backends(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let path = pins::map(dir, BACKEND_NAMES);
    let data = MapData::from_pin(&path).map_err(|e| {
        format!(
            "no xlb data plane is pinned in {} ({}: {e}); name the daemon's pin_dir with \
             --pin-dir or --config, or print the commands anyway with --no-check",
            dir.display(),
            path.display()
        )
    })?;
    let map: HashMap<MapData, u32, BackendName> =
        HashMap::try_from(Map::HashMap(data)).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let mut all: Vec<(String, String)> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(_, b)| (text(&b.vip), text(&b.backend)))
        .collect();
    all.sort();
    Ok(all)
}

pub(crate) fn inspect(args: &Args) -> Result<u8, String> {
    let dir = pin_dir(args)?;
    let shown = dir.to_string_lossy().into_owned();
    if !shown
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        return Err(format!(
            "pin directory {shown:?}: the commands would need shell quoting; use a path of \
             letters, digits and / . _ -"
        ));
    }
    let backend = match &args.backend {
        Some(b) => match b.split_once('/') {
            Some((vip, name)) if is_name(vip) && is_name(name) => Some((vip, name)),
            _ => {
                return Err(format!(
                    "--backend {b:?}: expected VIP/BACKEND, e.g. web/web-1"
                ));
            }
        },
        None => None,
    };
    if !args.no_check {
        let known = pinned_backends(&dir)?;
        if let Some((vip, name)) = backend
            && !known.iter().any(|(v, b)| v == vip && b == name)
        {
            let list: Vec<String> = known.iter().map(|(v, b)| format!("{v}/{b}")).collect();
            return Err(format!(
                "--backend {vip}/{name}: no such backend in {}; it has: {}",
                pins::map(&dir, BACKEND_NAMES).display(),
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            ));
        }
    }
    for (what, command) in commands(&shown, backend) {
        say!("# {what}\n{command}\n");
    }
    Ok(0)
}
