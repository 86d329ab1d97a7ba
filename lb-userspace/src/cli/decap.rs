//! `xlb decap attach|detach|stats IFACE`: the backend side of `forwarding = "ipip"`. The
//! XDP program `xlb_decap` (embedded like the load balancer's) removes the outer header
//! of IPv4-in-IPv4 and IPv6-in-IPv6 packets addressed to this host from the given
//! load-balancer sources, and drops encapsulated packets from any other source. Its
//! link and maps are pinned under `--pin-dir/IFACE`, so it outlives the command and
//! bpftool reads its counters (`xlb_dcap_stats`).
//!
//! "This host's addresses" are read (`ip -j addr`) when the command runs: attaching
//! again replaces the sources and re-reads the addresses, without detaching.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::links::PinnedLink,
};
use clap::Subcommand;
use lb_common::{
    ReasonStats,
    decap::{self, DecapReason},
};
use serde::Serialize;
use xlb::{
    config::{Source, parse_source},
    dataplane::DataplaneError,
    object::{DECAP_OBJECT, DECAP_PROGRAM_NAME, HAS_DATAPLANE},
};

use super::pass::{Mode, attach_pinned, link_path};

/// Where each interface's link and maps live unless --pin-dir says otherwise.
const DEFAULT_DECAP_PIN_DIR: &str = "/sys/fs/bpf/xlb-decap";
/// The link's file in an interface's directory.
const LINK: &str = "link";

#[derive(Subcommand)]
pub(crate) enum DecapOp {
    /// Attach the decap program to IFACE (in the current network namespace) and pin it;
    /// on an interface that has it, replace its sources and re-read this host's addresses.
    Attach {
        iface: String,
        /// A load balancer's outer source address or prefix (its `[ipip]` ipv4_source /
        /// ipv6_source); repeat for several. Encapsulated packets from elsewhere are
        /// dropped.
        #[arg(long = "from", value_name = "PREFIX", required = true)]
        from: Vec<String>,
        #[arg(long, value_enum, default_value_t = Mode::Native)]
        mode: Mode,
        #[arg(long, default_value = DEFAULT_DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the decap program from IFACE and remove its pins.
    Detach {
        iface: String,
        #[arg(long, default_value = DEFAULT_DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Print the decap program's counters, sources and local addresses on IFACE.
    Stats {
        iface: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

pub(crate) fn decap(op: DecapOp) -> Result<u8, String> {
    match op {
        DecapOp::Attach {
            iface,
            from,
            mode,
            pin_dir,
        } => attach(&iface, &from, mode, &pin_dir),
        DecapOp::Detach { iface, pin_dir } => detach(&iface, &pin_dir),
        DecapOp::Stats {
            iface,
            json,
            pin_dir,
        } => stats(&iface, json, &pin_dir),
    }
}

/// The `--from` values, parsed; the error names the one that is wrong.
fn sources(from: &[String]) -> Result<Vec<Source>, String> {
    from.iter()
        .map(|t| parse_source(t, !t.contains(':')).map_err(|e| format!("--from {e}")))
        .collect()
}

/// Every address of every interface in `ip -j addr` output (the host's addresses in
/// this network namespace).
fn local_addresses(json: &[u8]) -> Result<Vec<IpAddr>, String> {
    let list: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("reading `ip -j addr` output: {e}"))?;
    let mut out: Vec<IpAddr> = list
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn host_addresses() -> Result<Vec<IpAddr>, String> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
        .map_err(|e| format!("running `ip -j addr show`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip -j addr show`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    local_addresses(&out.stdout)
}

/// The maps of `iface`'s decap program, from their pins.
struct DecapMaps {
    from4: LpmTrie<MapData, [u8; 4], u32>,
    from6: LpmTrie<MapData, [u8; 16], u32>,
    local4: HashMap<MapData, [u8; 4], u32>,
    local6: HashMap<MapData, [u8; 16], u32>,
    stats: PerCpuArray<MapData, ReasonStats>,
}

fn pinned<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    dir: &Path,
    name: &str,
    wrap: fn(MapData) -> aya::maps::Map,
) -> Result<T, String> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        format!(
            "no decap map pinned at {} ({e}); is xlb-decap attached here?",
            path.display()
        )
    })?;
    T::try_from(wrap(data)).map_err(|e| format!("{}: {e}", path.display()))
}

impl DecapMaps {
    fn open(dir: &Path) -> Result<DecapMaps, String> {
        use aya::maps::Map;
        Ok(DecapMaps {
            from4: pinned(dir, decap::FROM_V4, Map::LpmTrie)?,
            from6: pinned(dir, decap::FROM_V6, Map::LpmTrie)?,
            local4: pinned(dir, decap::LOCAL_V4, Map::HashMap)?,
            local6: pinned(dir, decap::LOCAL_V6, Map::HashMap)?,
            stats: pinned(dir, decap::STATS, Map::PerCpuArray)?,
        })
    }

    /// Makes the maps hold exactly `from` and `local`.
    fn fill(&mut self, from: &[Source], local: &[IpAddr]) -> Result<(), String> {
        fn err(what: &'static str) -> impl Fn(aya::maps::MapError) -> String {
            move |e| format!("{what}: {e}")
        }
        let old4: Vec<Key<[u8; 4]>> = self.from4.keys().filter_map(Result::ok).collect();
        let old6: Vec<Key<[u8; 16]>> = self.from6.keys().filter_map(Result::ok).collect();
        for s in from {
            match s.prefix {
                IpAddr::V4(a) => self
                    .from4
                    .insert(&Key::new(u32::from(s.len), a.octets()), 1, 0)
                    .map_err(err("writing a source prefix"))?,
                IpAddr::V6(a) => self
                    .from6
                    .insert(&Key::new(u32::from(s.len), a.octets()), 1, 0)
                    .map_err(err("writing a source prefix"))?,
            }
        }
        let wanted = |len: u32, data: &[u8]| {
            from.iter().any(|s| {
                u32::from(s.len) == len
                    && match s.prefix {
                        IpAddr::V4(a) => a.octets()[..] == *data,
                        IpAddr::V6(a) => a.octets()[..] == *data,
                    }
            })
        };
        for k in old4 {
            if !wanted(k.prefix_len(), &k.data()) {
                self.from4.remove(&k).map_err(err("removing a source"))?;
            }
        }
        for k in old6 {
            if !wanted(k.prefix_len(), &k.data()) {
                self.from6.remove(&k).map_err(err("removing a source"))?;
            }
        }
        let old4: Vec<[u8; 4]> = self.local4.keys().filter_map(Result::ok).collect();
        let old6: Vec<[u8; 16]> = self.local6.keys().filter_map(Result::ok).collect();
        for a in local {
            match a {
                IpAddr::V4(a) => self.local4.insert(a.octets(), 1, 0),
                IpAddr::V6(a) => self.local6.insert(a.octets(), 1, 0),
            }
            .map_err(err("writing a local address"))?;
        }
        for k in old4 {
            if !local.contains(&IpAddr::from(k)) {
                self.local4
                    .remove(&k)
                    .map_err(err("removing a local address"))?;
            }
        }
        for k in old6 {
            if !local.contains(&IpAddr::from(k)) {
                self.local6
                    .remove(&k)
                    .map_err(err("removing a local address"))?;
            }
        }
        Ok(())
    }

    fn sources(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .from4
            .keys()
            .filter_map(Result::ok)
            .map(|k| format!("{}/{}", IpAddr::from(k.data()), k.prefix_len()))
            .chain(
                self.from6
                    .keys()
                    .filter_map(Result::ok)
                    .map(|k| format!("{}/{}", IpAddr::from(k.data()), k.prefix_len())),
            )
            .collect();
        out.sort();
        out
    }

    fn local(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .local4
            .keys()
            .filter_map(Result::ok)
            .map(IpAddr::from)
            .chain(self.local6.keys().filter_map(Result::ok).map(IpAddr::from))
            .collect();
        out.sort_unstable();
        out
    }
}

/// The marker of the network namespace that owns an interface's pins: an empty
/// directory `netns-<inode>` beside the link (bpffs holds no plain files), so that two
/// namespaces' `eth0` under one pin directory are told apart.
fn owner_marker() -> Result<String, String> {
    use std::os::unix::fs::MetadataExt as _;
    let ns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| format!("reading this process's network namespace: {e}"))?;
    Ok(format!("netns-{}", ns.ino()))
}

/// The pins of `iface` in this network namespace: `dir`, after checking that what is
/// there (if anything) is this namespace's.
fn own_dir(iface: &str, pin_dir: &Path) -> Result<(PathBuf, String), String> {
    let dir = link_path(iface, pin_dir)?;
    let marker = owner_marker()?;
    let others: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("netns-") && *n != marker)
        .collect();
    if let Some(other) = others.first() {
        return Err(format!(
            "{} holds the xlb-decap of an interface {iface} in another network namespace \
             ({other}; this one is {marker}): give each namespace its own --pin-dir",
            dir.display()
        ));
    }
    Ok((dir, marker))
}

/// `xlb decap stats IFACE`, with `--pin-dir` when it is not the default.
fn stats_command(iface: &str, pin_dir: &Path) -> String {
    if pin_dir == Path::new(DEFAULT_DECAP_PIN_DIR) {
        format!("xlb decap stats {iface}")
    } else {
        format!("xlb decap stats {iface} --pin-dir {}", pin_dir.display())
    }
}

/// Removes what an attach pinned under `dir` (the link, the maps, the marker, the
/// directory itself if it is then empty); what cannot be removed is named.
fn unpin_all(dir: &Path, marker: &str) -> Result<(), String> {
    for name in decap::ALL.iter().chain(&[LINK]) {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot unpin {}: {e}", path.display()));
            }
            _ => {}
        }
    }
    match std::fs::remove_dir(dir.join(marker)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot remove {}: {e}", dir.join(marker).display()));
        }
        _ => {}
    }
    // Kept if someone else put files there.
    if let Err(e) = std::fs::remove_dir(dir) {
        say!("kept {}: {e}", dir.display());
    }
    Ok(())
}

fn attach(iface: &str, from: &[String], mode: Mode, pin_dir: &Path) -> Result<u8, String> {
    let from = sources(from)?;
    let (dir, marker) = own_dir(iface, pin_dir)?;
    if !HAS_DATAPLANE {
        return Err(DataplaneError::NotBuilt.to_string());
    }
    let name = std::ffi::CString::new(iface).map_err(|e| format!("{iface:?}: {e}"))?;
    // SAFETY: if_nametoindex on a NUL-terminated name.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        return Err(format!("no interface {iface} in this network namespace"));
    }
    let local = host_addresses()?;
    let link = dir.join(LINK);
    let attached = link.exists();
    std::fs::create_dir_all(dir.join(&marker))
        .map_err(|e| format!("cannot create pin directory {}: {e}", dir.display()))?;
    let done = (|| {
        // The maps are created and pinned by the load, or adopted from their pins.
        let mut loader = EbpfLoader::new();
        for name in decap::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
        let mut ebpf = loader
            .load(DECAP_OBJECT)
            .map_err(|e| format!("loading xlb-decap failed: {e}"))?;
        DecapMaps::open(&dir)?.fill(&from, &local)?;
        if !attached {
            attach_pinned(
                &mut ebpf,
                DECAP_PROGRAM_NAME,
                "xlb-decap",
                iface,
                mode,
                &link,
            )?;
        }
        Ok(())
    })();
    if let Err(e) = done {
        // A first attach that failed leaves nothing behind; an update keeps what runs.
        if !attached {
            unpin_all(&dir, &marker)?;
        }
        return Err(e);
    }
    let shown: Vec<String> = from
        .iter()
        .map(|s| format!("{}/{}", s.prefix, s.len))
        .collect();
    say!(
        "{iface}: xlb-decap {}; decapsulates ipip from {} to {} local address(es); \
         `{}` shows its counters",
        if attached {
            "updated (sources and addresses)".to_string()
        } else {
            format!("attached ({} mode)", mode.name())
        },
        shown.join(", "),
        local.len(),
        stats_command(iface, pin_dir)
    );
    Ok(0)
}

/// `dir`'s link, or why there is none.
fn attached_link(iface: &str, dir: &Path) -> Result<PathBuf, String> {
    let link = dir.join(LINK);
    if link.exists() {
        Ok(link)
    } else {
        Err(format!(
            "{iface}: xlb-decap is not attached here (no link pinned at {})",
            link.display()
        ))
    }
}

fn detach(iface: &str, pin_dir: &Path) -> Result<u8, String> {
    let (dir, marker) = own_dir(iface, pin_dir)?;
    let link = attached_link(iface, &dir)?;
    let pinned = PinnedLink::from_pin(&link).map_err(|e| {
        format!(
            "{iface}: reading the link pinned at {}: {e}",
            link.display()
        )
    })?;
    // Unpinned and closed, the link has no holder left: the kernel detaches the program.
    drop(
        pinned
            .unpin()
            .map_err(|e| format!("unpinning {}: {e}", link.display()))?,
    );
    say!("{iface}: xlb-decap detached");
    unpin_all(&dir, &marker)?;
    Ok(0)
}

#[derive(Serialize)]
struct StatsView {
    interface: String,
    sources: Vec<String>,
    local_addresses: Vec<IpAddr>,
    /// Verdict name -> packets, bytes.
    verdicts: Vec<VerdictView>,
}

#[derive(Serialize)]
struct VerdictView {
    verdict: &'static str,
    packets: u64,
    bytes: u64,
}

fn stats(iface: &str, json: bool, pin_dir: &Path) -> Result<u8, String> {
    let (dir, _) = own_dir(iface, pin_dir)?;
    attached_link(iface, &dir)?;
    let maps = DecapMaps::open(&dir)?;
    let mut verdicts = Vec::new();
    for r in DecapReason::ALL {
        let per_cpu = maps
            .stats
            .get(&r.index(), 0)
            .map_err(|e| format!("reading {}: {e}", decap::STATS))?;
        verdicts.push(VerdictView {
            verdict: r.name(),
            packets: per_cpu.iter().map(|s| s.packets).sum(),
            bytes: per_cpu.iter().map(|s| s.bytes).sum(),
        });
    }
    let view = StatsView {
        interface: iface.to_string(),
        sources: maps.sources(),
        local_addresses: maps.local(),
        verdicts,
    };
    if json {
        let text = serde_json::to_string_pretty(&view).map_err(|e| e.to_string())?;
        say!("{text}");
        return Ok(0);
    }
    say!("{iface}: xlb-decap");
    say!("  from:  {}", view.sources.join(", "));
    let local: Vec<String> = view.local_addresses.iter().map(IpAddr::to_string).collect();
    say!("  to:    {}", local.join(", "));
    for v in &view.verdicts {
        say!(
            "  {:<22} {:>12} packets {:>14} bytes",
            v.verdict,
            v.packets,
            v.bytes
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_come_from_every_interface() {
        let json = br#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1"},
            {"family":"inet","local":"198.18.0.100"}]},
            {"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.3.11"},
            {"family":"inet6","local":"2001:db8:3::11"}]}]"#;
        let got = local_addresses(json).unwrap();
        let want: Vec<IpAddr> = ["127.0.0.1", "198.18.0.100", "198.18.3.11", "2001:db8:3::11"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bad_source_is_named() {
        let e = sources(&["198.18.2.0/24".into(), "198.18.2.1/24".into()]).unwrap_err();
        assert!(
            e.starts_with("--from \"198.18.2.1/24\" has host bits set"),
            "{e}"
        );
        assert_eq!(sources(&["2001:db8:2::/64".into()]).unwrap()[0].len, 64);
    }
}
