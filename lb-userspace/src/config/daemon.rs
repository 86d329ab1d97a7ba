//! The `[daemon]` settings: what `xlb run` reads when it starts, never changed by an
//! apply.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataplane::AttachMode;

use super::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};

/// Default `[daemon] flow_idle_timeout` (seconds).
pub const DEFAULT_FLOW_IDLE_TIMEOUT_S: u32 = 300;
/// Default `[daemon] udp_grace` (seconds).
pub const DEFAULT_UDP_GRACE_S: u32 = 30;

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
    /// Entries of the flow table, which holds only flows in changed slots and never
    /// evicts; only takes effect when the maps are created.
    pub flow_capacity: u32,
    /// Seconds without a packet after which a flow entry is deleted; a changed slot
    /// becomes stateless no sooner than this after its change.
    pub flow_idle_timeout: u32,
    /// Seconds after a table change during which a UDP flow the flow table does not
    /// know, in a changed slot, is taken to be older than the change (at most
    /// `flow_idle_timeout`).
    pub udp_grace: u32,
    /// The flood guard: new flow entries per second on each CPU.
    pub flow_insert_rate: u32,
    /// VIP ids the maps hold (ids 1..max_vips): the size of the per-VIP arrays, and so
    /// of their bpftool dumps. A start with another value resizes the pinned arrays,
    /// keeping their contents.
    pub max_vips: u32,
    /// Backend ids the maps hold (ids 1..max_backends), over all VIPs; the same for the
    /// per-backend arrays. A backend removed while flows still point at it keeps its id
    /// until they are gone, so leave room for a full replacement.
    pub max_backends: u32,
    /// `[daemon.announce]`: announce the VIPs through the routing daemon (none: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce: Option<super::Announce>,
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
            flow_idle_timeout: DEFAULT_FLOW_IDLE_TIMEOUT_S,
            udp_grace: DEFAULT_UDP_GRACE_S,
            flow_insert_rate: lb_common::maps::DEFAULT_FLOW_INSERT_RATE,
            max_vips: lb_common::maps::DEFAULT_MAX_VIPS,
            max_backends: lb_common::maps::DEFAULT_MAX_BACKENDS,
            announce: None,
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
            (
                "flow_idle_timeout",
                show(&self.flow_idle_timeout),
                show(&new.flow_idle_timeout),
            ),
            ("udp_grace", show(&self.udp_grace), show(&new.udp_grace)),
            (
                "flow_insert_rate",
                show(&self.flow_insert_rate),
                show(&new.flow_insert_rate),
            ),
            ("max_vips", show(&self.max_vips), show(&new.max_vips)),
            (
                "max_backends",
                show(&self.max_backends),
                show(&new.max_backends),
            ),
            ("announce", show(&self.announce), show(&new.announce)),
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
