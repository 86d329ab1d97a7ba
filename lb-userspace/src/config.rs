//! The configuration file: TOML in, a plain model out. Parsing is strict: an unknown key,
//! a wrong type or a missing field is an error naming the file, the line and the key
//! path (`vip[0].backend[1].weight`). Whether the values make sense together (addresses
//! of the VIP's family, unique names, weights in range) is the `structure` guardrail's
//! job (`guard`), so that a config built by a CLI verb is checked by the same code as a
//! file. The model keeps each VIP's and backend's line for those reports.
//!
//! The model is here; `daemon` holds the `[daemon]` settings, `health_check` the
//! `[vip.health]` checks, and `parse` reads the TOML (with lines) and writes it back.
//!
//! ```toml
//! [daemon]
//! interface = "eth0"
//!
//! [[vip]]
//! name = "web"
//! address = "198.18.0.100"
//! port = 80
//! protocol = "tcp"
//!
//! [[vip.backend]]
//! name = "web-1"
//! address = "198.18.0.11"
//! mac = "neighbour"        # or "02:00:00:00:00:01"
//! weight = 100
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod announce;
mod daemon;
mod health_check;
mod ipip;
mod parse;

pub use announce::{Announce, DEFAULT_BIRD_SOCKET, DEFAULT_ROUTES_FILE, MAX_DRAIN_TIME};
pub use daemon::{DEFAULT_FLOW_IDLE_TIMEOUT_S, DEFAULT_UDP_GRACE_S, Daemon, XdpMode};
pub use health_check::{CheckKind, HealthCheck};
pub use ipip::{Ipip, Source, parse_source};
pub use parse::{load, parse, to_toml};

/// Where the daemon listens when the config does not say.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// Where history and id assignments live when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xlb";
/// Largest weight a backend may have. Weights are relative; 0 means "no new flows".
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Value of `mac` that asks the daemon to read the backend's MAC from the neighbour table.
pub const MAC_FROM_NEIGHBOUR: &str = "neighbour";

/// A parse failure: which file, which line, which key, and what is wrong.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {key}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        /// Dotted path of the offending key; empty for a syntax error outside any key.
        key: String,
        message: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: Daemon,
    /// Global guardrail policy; each VIP may override any field.
    #[serde(default)]
    pub guardrails: Policy,
    #[serde(default, skip_serializing_if = "is_default")]
    pub rollout: Rollout,
    /// Outer sources of `forwarding = "ipip"`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ipip: Ipip,
    #[serde(default, rename = "vip")]
    pub vips: Vec<Vip>,
    /// The file says `vip = []`: serving no VIP at all is intended, not a truncated file.
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_empty: bool,
    /// Line of each top-level, `[daemon]` and `[guardrails]` key in the file
    /// (`"daemon.table_size"`), for reports about global settings.
    #[serde(skip)]
    pub key_lines: BTreeMap<String, usize>,
}

impl Config {
    /// This config without what only locates it in a file (lines), for comparisons of
    /// state.
    pub fn without_lines(&self) -> Config {
        let mut c = self.clone();
        c.key_lines.clear();
        for v in &mut c.vips {
            v.line = None;
            v.backends.iter_mut().for_each(|b| b.line = None);
        }
        c
    }

    /// Line of global key `key` (`"guardrails.max_flow_shift"`), when the file has it.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.key_lines.get(key).copied()
    }
}

/// Guardrail limits. Defaults are the product's; see `guard` for what each one measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Fewest backends with weight > 0 a VIP may have.
    pub min_active_backends: u32,
    /// Largest share of a VIP's table one backend may own.
    pub max_backend_share: f64,
    /// Largest distance between a backend's table share and its weight share.
    pub table_fidelity: f64,
    /// Largest fraction of a VIP's slots that may change owner in one apply.
    pub max_flow_shift: f64,
    /// With health checks: smallest fraction of weighted backends that must be healthy.
    pub healthy_quorum: f64,
    /// With health checks: below this fraction of weighted backends up, no more backends
    /// are taken out for health (the checks, not the backends, are suspect).
    pub panic_threshold: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_active_backends: 2,
            max_backend_share: 0.5,
            table_fidelity: 0.005,
            max_flow_shift: 0.5,
            healthy_quorum: 0.5,
            panic_threshold: 0.5,
        }
    }
}

/// Per-VIP overrides of `Policy`; an absent field inherits the global value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_active_backends: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backend_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_fidelity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_flow_shift: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_quorum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<f64>,
}

impl Policy {
    /// This policy with `o`'s fields on top.
    pub fn with(&self, o: &PolicyOverride) -> Policy {
        Policy {
            min_active_backends: o.min_active_backends.unwrap_or(self.min_active_backends),
            max_backend_share: o.max_backend_share.unwrap_or(self.max_backend_share),
            table_fidelity: o.table_fidelity.unwrap_or(self.table_fidelity),
            max_flow_shift: o.max_flow_shift.unwrap_or(self.max_flow_shift),
            healthy_quorum: o.healthy_quorum.unwrap_or(self.healthy_quorum),
            panic_threshold: o.panic_threshold.unwrap_or(self.panic_threshold),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forwarding {
    /// Rewrite the destination MAC; backends share the segment and hold the VIP on lo.
    #[serde(rename = "l2-dsr")]
    L2Dsr,
    /// Encapsulate in IPv4 (IPv6) addressed to the backend and send it by the route the
    /// kernel's FIB gives; backends decapsulate (`xlb decap`) and hold the VIP on lo.
    #[serde(rename = "ipip")]
    Ipip,
}

impl Forwarding {
    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::L2Dsr => "l2-dsr",
            Forwarding::Ipip => "ipip",
        }
    }

    /// The `VipInfo::forwarding` value.
    pub fn code(self) -> u32 {
        match self {
            Forwarding::L2Dsr => lb_common::FWD_L2_DSR,
            Forwarding::Ipip => lb_common::FWD_IPIP,
        }
    }
}

/// How changes are watched after they take effect (`[rollout]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rollout {
    /// Watch window after every operator change (`"30s"`); none: only with `--watch`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub watch: Option<std::time::Duration>,
}

/// One virtual service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub name: String,
    /// IPv4 or IPv6 address, as written (checked by the structure rule).
    pub address: String,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default = "Vip::default_forwarding")]
    pub forwarding: Forwarding,
    /// Answer ICMP / ICMPv6 echo requests to the VIP's address (default true). VIPs on
    /// one address must agree.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub icmp_echo: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub guardrails: PolicyOverride,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendSpec>,
    /// Line of the `[[vip]]` header in the file, when the VIP came from one.
    #[serde(skip)]
    pub line: Option<usize>,
}

impl Vip {
    fn default_forwarding() -> Forwarding {
        Forwarding::L2Dsr
    }

    /// `name (address:port/proto)`, for messages.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.endpoint())
    }

    /// `address:port/proto`; an IPv6 address in brackets, as in a socket address:
    /// `[2001:db8::53]:53/udp`.
    pub fn endpoint(&self) -> String {
        let address = if self.address.contains(':') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        };
        format!("{address}:{}/{}", self.port, self.protocol.as_str())
    }

    pub fn backend(&self, name: &str) -> Option<&BackendSpec> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Whether backend `b` of this VIP takes its MAC from the neighbour table: `l2-dsr`
    /// only (`ipip` sends to the route's next hop, which the FIB resolves).
    pub fn resolves_mac(&self, b: &BackendSpec) -> bool {
        self.forwarding == Forwarding::L2Dsr && b.mac == MAC_FROM_NEIGHBOUR
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

pub(crate) fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

/// One real server of a VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Unique within the VIP; the table position of the backend derives from it.
    pub name: String,
    /// Address of the VIP's family (used for the neighbour lookup and health checks).
    pub address: String,
    /// `aa:bb:cc:dd:ee:ff`, or "neighbour" to resolve it from the neighbour table.
    #[serde(default = "BackendSpec::default_mac")]
    pub mac: String,
    /// Relative weight, 0..=1000000; 0 takes no new flows (drained).
    pub weight: i64,
    #[serde(skip)]
    pub line: Option<usize>,
}

impl BackendSpec {
    fn default_mac() -> String {
        MAC_FROM_NEIGHBOUR.to_string()
    }

    /// The weight as the table sees it; only meaningful once `structure` passed.
    pub fn weight(&self) -> u32 {
        u32::try_from(self.weight).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;

/// Configs for unit tests.
#[cfg(test)]
pub mod fixture {
    use super::*;

    /// TCP VIP `name` at 198.18.0.100:80 with `backends` (name, weight) at 198.18.0.11,
    /// .12, ... and one explicit MAC, without checks or overrides.
    pub fn vip(name: &str, backends: &[(&str, i64)]) -> Vip {
        Vip {
            name: name.into(),
            address: "198.18.0.100".into(),
            port: 80,
            protocol: Protocol::Tcp,
            forwarding: Forwarding::L2Dsr,
            icmp_echo: true,
            guardrails: Default::default(),
            health: None,
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, &(name, weight))| BackendSpec {
                    name: name.into(),
                    address: format!("198.18.0.{}", 11 + i),
                    mac: "02:00:00:00:00:01".into(),
                    weight,
                    line: None,
                })
                .collect(),
            line: None,
        }
    }
}
