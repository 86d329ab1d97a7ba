//! Which VIPs this host announces to its routers, and the routes file BIRD includes:
//! pure functions of the host's state, the VIPs' health and `[daemon.announce]`. A route
//! carries an address, not a port: an address is announced only while every VIP on it
//! is. `crate::bird` talks to the routing daemon; the daemon's `announcer` task applies
//! these.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Announce, MAX_DRAIN_TIME},
    controller::VipStatsView,
    history::Record,
};

/// BIRD protocol names of the static routes xlb writes; the BGP export filters name them.
pub const PROTOCOL4: &str = "xlb4";
pub const PROTOCOL6: &str = "xlb6";

/// What the host is doing, as far as announcing goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Host {
    /// The XDP program is attached (its link is pinned) and the VIPs are in its maps.
    pub attached: bool,
    /// The daemon is stopping (signal or teardown): it withdraws first.
    pub stopping: bool,
    /// `xlb host drain` is in effect.
    pub drained: bool,
}

/// One VIP as the announcement sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct VipState {
    pub vip: String,
    pub address: IpAddr,
    /// Backends with weight above 0 that are up (or unchecked) and have a MAC.
    pub healthy: u32,
    /// Too few backends up to take more out for health: the checks are suspect.
    pub panic: bool,
}

/// Why a VIP is announced or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "kebab-case")]
pub enum Why {
    /// Announced: this host can serve it.
    Serving,
    /// The XDP program is not attached.
    Detached,
    /// The daemon is stopping.
    Stopping,
    /// `xlb host drain`.
    Drained,
    /// The VIP is in health panic.
    Panic,
    TooFewHealthy {
        healthy: u32,
        required: u32,
    },
    /// Another VIP on the same address is not announced, and a route carries them all.
    AddressShared {
        with: String,
    },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Serving => write!(f, "serving"),
            Why::Detached => write!(f, "XDP is not attached"),
            Why::Stopping => write!(f, "the daemon is stopping"),
            Why::Drained => write!(f, "the host is drained (xlb host undrain ends it)"),
            Why::Panic => write!(f, "health panic: too few backends up"),
            Why::TooFewHealthy { healthy, required } => write!(
                f,
                "{healthy} healthy backend(s); daemon.announce.min_healthy_backends is {required}"
            ),
            Why::AddressShared { with } => {
                write!(f, "VIP {with} on the same address is not announced")
            }
        }
    }
}

/// Whether one VIP's address is announced, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub vip: String,
    pub address: IpAddr,
    pub announce: bool,
    #[serde(flatten)]
    pub why: Why,
}

/// The announcement of every VIP: the host's state first, then each VIP's health, then
/// the rule that a shared address goes only while all its VIPs go.
pub fn decide(host: Host, min_healthy: u32, vips: &[VipState]) -> Vec<Decision> {
    let own = |v: &VipState| {
        if host.stopping {
            Why::Stopping
        } else if !host.attached {
            Why::Detached
        } else if host.drained {
            Why::Drained
        } else if v.panic {
            Why::Panic
        } else if v.healthy < min_healthy {
            Why::TooFewHealthy {
                healthy: v.healthy,
                required: min_healthy,
            }
        } else {
            Why::Serving
        }
    };
    let mut out: Vec<Decision> = vips
        .iter()
        .map(|v| {
            let why = own(v);
            Decision {
                vip: v.vip.clone(),
                address: v.address,
                announce: why == Why::Serving,
                why,
            }
        })
        .collect();
    let held: BTreeMap<IpAddr, String> = out
        .iter()
        .filter(|d| !d.announce)
        .map(|d| (d.address, d.vip.clone()))
        .collect();
    for d in out.iter_mut().filter(|d| d.announce) {
        if let Some(with) = held.get(&d.address) {
            d.announce = false;
            d.why = Why::AddressShared { with: with.clone() };
        }
    }
    out
}

/// The addresses to announce.
pub fn routes(decisions: &[Decision]) -> BTreeSet<IpAddr> {
    decisions
        .iter()
        .filter(|d| d.announce)
        .map(|d| d.address)
        .collect()
}

/// The routes file: one static protocol per family, both always present (BIRD's BGP
/// export filters name them), each host route a blackhole: BIRD exports it with itself
/// as next hop and never installs it in this host's kernel. Each protocol's description
/// is `xlb TOKEN`, by which xlb checks that BIRD runs this very file.
pub fn routes_file(routes: &BTreeSet<IpAddr>, token: &str) -> String {
    let mut text = String::from(ROUTES_FILE_HEADER);
    text += " (daemon.announce.routes_file) on every change of what this host\n\
             # announces; BIRD reads it on `configure`. Do not edit: xlb replaces it.\n";
    for (name, family, v4) in [(PROTOCOL4, "ipv4", true), (PROTOCOL6, "ipv6", false)] {
        text += &format!(
            "protocol static {name} {{\n  description \"{}\";\n  {family};\n",
            description(token)
        );
        for a in routes.iter().filter(|a| a.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            text += &format!("  route {a}/{len} blackhole;\n");
        }
        text += "}\n";
    }
    text
}

/// How every routes file xlb writes begins.
pub const ROUTES_FILE_HEADER: &str = "# Written by xlb";

/// Whether xlb may replace a file holding `existing`: one it wrote, or an empty one
/// (installed for BIRD's first start). Anything else is someone else's file.
pub fn may_replace(existing: &str) -> bool {
    existing.trim().is_empty() || existing.starts_with(ROUTES_FILE_HEADER)
}

/// The description of the routes file's protocols for `token`.
pub fn description(token: &str) -> String {
    format!("xlb {token}")
}

/// Each VIP of the running generation with its health from `stats` (the counters' view
/// of the same generation): backends with weight, a MAC and, where the VIP is checked,
/// an "up" verdict; a VIP whose address does not parse is left out (the structure rule
/// refuses such a config).
pub fn vip_states(record: &Record, stats: &[VipStatsView]) -> Vec<VipState> {
    record
        .config
        .vips
        .iter()
        .filter_map(|v| {
            let address = v.address.parse().ok()?;
            let view = stats.iter().find(|s| s.vip == v.name);
            // A checked VIP counts only backends a probe since the start found up: before
            // that verdict (a start, a reload adding the VIP) they do not count.
            let healthy = view.map_or(0, |s| {
                s.backends
                    .iter()
                    .filter(|b| {
                        let up = if s.checked {
                            b.healthy == Some(true) && b.confirmed == Some(true)
                        } else {
                            b.healthy != Some(false)
                        };
                        b.weight > 0 && up && b.mac.is_some()
                    })
                    .count() as u32
            });
            Some(VipState {
                vip: v.name.clone(),
                address,
                healthy,
                panic: view.is_some_and(|s| s.panic.is_some()),
            })
        })
        .collect()
}

/// What `xlb status` and `/metrics` show of the announcement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// `xlb host drain` in effect: since when and by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Drained>,
    pub vips: Vec<Decision>,
    /// The addresses BIRD was last asked to announce.
    pub routes: Vec<IpAddr>,
    /// BIRD took the last routes file; false while it refuses it or cannot be reached.
    pub applied: bool,
    /// Why the last `configure` failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The drain mark, kept in the state directory so that it survives restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    /// Seconds since the Unix epoch.
    pub since: u64,
    pub user: String,
}

/// Problems with `[daemon.announce]`: (key, what is wrong, how to fix it).
pub fn check(a: &Announce) -> Vec<(&'static str, String, &'static str)> {
    let mut out = Vec::new();
    if a.min_healthy_backends == 0 {
        out.push((
            "daemon.announce.min_healthy_backends",
            "daemon.announce.min_healthy_backends = 0: a VIP without a single healthy \
             backend would still attract traffic"
                .into(),
            "set it to 1 or more",
        ));
    }
    if a.drain_time > MAX_DRAIN_TIME {
        out.push((
            "daemon.announce.drain_time",
            format!(
                "daemon.announce.drain_time = {}: longer than {} (a stop would outlast a \
                 service manager's timeout)",
                humantime::format_duration(a.drain_time),
                humantime::format_duration(MAX_DRAIN_TIME)
            ),
            "the time the routers need to move traffic away: a few seconds",
        ));
    }
    for (key, path) in [
        ("daemon.announce.bird_socket", &a.bird_socket),
        ("daemon.announce.routes_file", &a.routes_file),
    ] {
        if !path.is_absolute() {
            out.push((
                key,
                format!("{key} = {:?} is not an absolute path", path.display()),
                "give the full path, as BIRD's config names it",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
