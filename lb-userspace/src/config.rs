//! The configuration file: TOML in, a plain model out. Parsing is strict: an unknown key,
//! a wrong type or a missing field is an error naming the file, the line and the key
//! path (`vip[0].backend[1].weight`). Whether the values make sense together (addresses
//! of the VIP's family, unique names, weights in range) is the `structure` guardrail's
//! job (`guard`), so that a config built by a CLI verb is checked by the same code as a
//! file. The model keeps each VIP's and backend's line for those reports.
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

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::Spanned;

use crate::dataplane::AttachMode;

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

/// Settings of `xlb run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Interface the XDP program attaches to; required by `xlb run`, not by `validate`.
    pub interface: Option<String>,
    /// `native`, `generic` or `auto` (native, falling back to generic).
    pub xdp_mode: XdpMode,
    /// Unix socket of the CLI.
    pub socket: PathBuf,
    /// Group allowed to use the socket besides root (mode 0660); none means 0600.
    pub socket_group: Option<String>,
    /// History and id assignments.
    pub state_dir: PathBuf,
    /// bpffs directory of the pinned program, link and maps.
    pub pin_dir: PathBuf,
    /// Address of the Prometheus text endpoint (`GET /metrics`); none disables it.
    pub metrics: Option<String>,
    /// Flow hash seed; every host behind one ECMP group must use the same.
    pub hash_seed: u32,
    /// Slots per VIP table: a prime; more slots give finer shares.
    pub table_size: u32,
    /// Entries of the flow table (LRU); only takes effect when the maps are created.
    pub flow_capacity: u32,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            interface: None,
            xdp_mode: XdpMode::Native,
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            pin_dir: PathBuf::from(crate::dataplane::pins::DEFAULT_PIN_DIR),
            metrics: None,
            hash_seed: 0,
            table_size: lb_common::maps::DEFAULT_TABLE_SIZE,
            flow_capacity: lb_common::maps::DEFAULT_FLOW_CAPACITY,
        }
    }
}

impl Daemon {
    /// Every setting of `new` that differs from `self`, as `key: old -> new`. Daemon
    /// settings take effect when `xlb run` starts, never through an apply.
    pub fn differences(&self, new: &Daemon) -> Vec<String> {
        let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
        [
            ("interface", show(&self.interface), show(&new.interface)),
            ("xdp_mode", show(&self.xdp_mode), show(&new.xdp_mode)),
            ("socket", show(&self.socket), show(&new.socket)),
            (
                "socket_group",
                show(&self.socket_group),
                show(&new.socket_group),
            ),
            ("state_dir", show(&self.state_dir), show(&new.state_dir)),
            ("pin_dir", show(&self.pin_dir), show(&new.pin_dir)),
            ("metrics", show(&self.metrics), show(&new.metrics)),
            ("hash_seed", show(&self.hash_seed), show(&new.hash_seed)),
            ("table_size", show(&self.table_size), show(&new.table_size)),
            (
                "flow_capacity",
                show(&self.flow_capacity),
                show(&new.flow_capacity),
            ),
        ]
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(key, a, b)| format!("daemon.{key}: {a} -> {b}"))
        .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    Native,
    Generic,
    Auto,
}

impl From<XdpMode> for AttachMode {
    fn from(mode: XdpMode) -> Self {
        match mode {
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
            XdpMode::Auto => AttachMode::Auto,
        }
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
}

/// Health checks of a VIP's backends (`[vip.health]`). A backend is marked down after
/// `fall` failed probes in a row and up again after `rise` good ones; while down it gets
/// no new flows (see `health`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `tcp` (connect), `http` (GET `path`, status in `status`) or `udp` (send `send`,
    /// expect a reply, containing `expect` if set).
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: CheckKind,
    /// Port probed on each backend's own address.
    pub port: u16,
    #[serde(default = "HealthCheck::default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "HealthCheck::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Good probes in a row that bring a down backend back.
    #[serde(default = "HealthCheck::default_rise")]
    pub rise: u32,
    /// Failed probes in a row that take a backend down.
    #[serde(default = "HealthCheck::default_fall")]
    pub fall: u32,
    /// Seconds over which a recovered backend is brought back to its weight in steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_s: Option<u64>,
    /// `http`: the path requested (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http`: accepted status codes, `200-399` (default) or one code like `204`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `udp`: the datagram sent (required for `udp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// `udp`: text the reply must contain (default: any reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// What a health probe does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    #[default]
    Tcp,
    Http,
    Udp,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Udp => "udp",
        }
    }
}

impl HealthCheck {
    /// A TCP connect check of `port` with every other setting at its default.
    pub fn tcp(port: u16) -> Self {
        HealthCheck {
            kind: CheckKind::Tcp,
            port,
            interval_ms: Self::default_interval_ms(),
            timeout_ms: Self::default_timeout_ms(),
            rise: Self::default_rise(),
            fall: Self::default_fall(),
            slow_start_s: None,
            path: None,
            status: None,
            send: None,
            expect: None,
        }
    }

    /// One line: `tcp port 8080 every 1000 ms, timeout 500 ms, rise 2, fall 3`, with
    /// the kind's own settings.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            CheckKind::Tcp => format!("tcp port {}", self.port),
            CheckKind::Http => format!(
                "http GET {} port {} expecting {}",
                self.path.as_deref().unwrap_or("/"),
                self.port,
                self.status_text()
            ),
            CheckKind::Udp => format!(
                "udp port {} sending {:?} expecting {}",
                self.port,
                self.send.as_deref().unwrap_or(""),
                self.expect
                    .as_deref()
                    .map_or("any reply".into(), |e| format!("{e:?}"))
            ),
        };
        let slow = self
            .slow_start_s
            .map_or(String::new(), |s| format!(", slow start {s} s"));
        format!(
            "{what} every {} ms, timeout {} ms, rise {}, fall {}{slow}",
            self.interval_ms, self.timeout_ms, self.rise, self.fall
        )
    }

    /// `http`: `status` as written, or its default `200-399`.
    pub fn status_text(&self) -> &str {
        self.status.as_deref().unwrap_or("200-399")
    }

    /// `http`: the status codes a probe accepts, from `status_text`; `None` when it is
    /// neither `NNN` nor `NNN-NNN` with 100 <= first <= last <= 599. The `structure`
    /// rule and the probe both read it here, so they cannot disagree.
    pub fn statuses(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let text = self.status_text();
        let code = |s: &str| {
            let n: u16 = s.parse().ok()?;
            (s.len() == 3 && (100..=599).contains(&n)).then_some(n)
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(text)?, code(text)?),
        };
        (first <= last).then_some(first..=last)
    }

    fn default_interval_ms() -> u64 {
        1000
    }
    fn default_timeout_ms() -> u64 {
        500
    }
    fn default_rise() -> u32 {
        2
    }
    fn default_fall() -> u32 {
        3
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
        format!(
            "{} ({}:{}/{})",
            self.name,
            self.address,
            self.port,
            self.protocol.as_str()
        )
    }

    pub fn backend(&self, name: &str) -> Option<&BackendSpec> {
        self.backends.iter().find(|b| b.name == name)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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

/// `config` as a config file: what `xlb export` prints. `vip = []` stands for an
/// intentionally empty VIP list.
pub fn to_toml(config: &Config) -> Result<String, toml::ser::Error> {
    let mut c = config.without_lines();
    c.allow_empty = false;
    let text = toml::to_string(&c)?;
    // A top-level key must come before the first table header.
    Ok(if config.vips.is_empty() {
        format!("vip = []\n{text}")
    } else {
        text
    })
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses `text`; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(&e, text, path, ""))?;
    let spanned: Spanned<SpannedConfig> = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        toml_error(e.inner(), text, path, &key)
    })?;
    let mut config = spanned.into_inner().into_config(text);
    config.key_lines = key_lines(text);
    Ok(config)
}

/// Line of every top-level key and of every key of the `[daemon]` and `[guardrails]`
/// tables. The text already
/// parsed, so a second parse cannot fail; if it did, reports just go without lines.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return out;
    };
    for (table, value) in doc.get_ref() {
        let table = table.get_ref().as_ref();
        out.insert(table.to_string(), line_of(text, value.span().start));
        if !matches!(table, "daemon" | "guardrails" | "rollout") {
            continue;
        }
        for (key, _) in value.get_ref().as_table().into_iter().flatten() {
            out.insert(
                format!("{table}.{}", key.get_ref()),
                line_of(text, key.span().start),
            );
        }
    }
    out
}

fn toml_error(e: &toml::de::Error, text: &str, path: &Path, key: &str) -> ConfigError {
    let line = e.span().map_or(1, |s| line_of(text, s.start));
    // Spans are read through a private serde field; it is not part of the user's path.
    let key = key
        .replace("$__serde_spanned_private_value.", "")
        .replace(".$__serde_spanned_private_value", "");
    let key = if key == "." { "" } else { key.as_str() };
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        key: if key.is_empty() {
            "(top level)".to_string()
        } else {
            key.to_string()
        },
        message: e.message().trim().to_string(),
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// The file as serde reads it: the same shape as `Config`, with spans on VIPs and
// backends so that later reports can name their lines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpannedConfig {
    #[serde(default)]
    daemon: Daemon,
    #[serde(default)]
    guardrails: Policy,
    #[serde(default)]
    rollout: Rollout,
    #[serde(default)]
    vip: Option<Vec<Spanned<SpannedVip>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpannedVip {
    name: String,
    address: String,
    port: u16,
    protocol: Protocol,
    #[serde(default = "Vip::default_forwarding")]
    forwarding: Forwarding,
    #[serde(default)]
    guardrails: PolicyOverride,
    #[serde(default)]
    health: Option<HealthCheck>,
    #[serde(default)]
    backend: Vec<Spanned<BackendSpec>>,
}

impl SpannedConfig {
    fn into_config(self, text: &str) -> Config {
        Config {
            daemon: self.daemon,
            guardrails: self.guardrails,
            rollout: self.rollout,
            allow_empty: self.vip.as_ref().is_some_and(Vec::is_empty),
            key_lines: BTreeMap::new(),
            vips: self
                .vip
                .into_iter()
                .flatten()
                .map(|v| {
                    let line = line_of(text, v.span().start);
                    let v = v.into_inner();
                    Vip {
                        name: v.name,
                        address: v.address,
                        port: v.port,
                        protocol: v.protocol,
                        forwarding: v.forwarding,
                        guardrails: v.guardrails,
                        health: v.health,
                        backends: v
                            .backend
                            .into_iter()
                            .map(|b| {
                                let line = line_of(text, b.span().start);
                                BackendSpec {
                                    line: Some(line),
                                    ..b.into_inner()
                                }
                            })
                            .collect(),
                        line: Some(line),
                    }
                })
                .collect(),
        }
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
