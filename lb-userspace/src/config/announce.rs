//! `[daemon.announce]`: whether and how this host announces its VIPs through the routing
//! daemon (BIRD), and the policy that decides when a VIP is worth attracting traffic.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// Settings of the announcement; its presence turns announcing on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Announce {
    /// BIRD's control socket (`bird -s`).
    pub bird_socket: PathBuf,
    /// The file xlb writes the VIP routes to, included by BIRD's config; xlb replaces it
    /// and asks BIRD to `configure`.
    pub routes_file: PathBuf,
    /// A VIP is announced only while at least this many of its backends with weight
    /// above 0 are healthy (up, or unchecked) and reachable (MAC known).
    pub min_healthy_backends: u32,
    /// How long a stopping daemon or a teardown waits after withdrawing, for the routers
    /// to move traffic away before the daemon exits or XDP is detached.
    #[serde(with = "humantime_serde")]
    pub drain_time: Duration,
}

/// BIRD's own default control socket.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// Where the package's BIRD config includes the routes from.
pub const DEFAULT_ROUTES_FILE: &str = "/etc/bird/xlb/vips.conf";
/// Longest drain time accepted: a stop must not hang for longer than a unit's timeout.
pub const MAX_DRAIN_TIME: Duration = Duration::from_secs(300);

impl Default for Announce {
    fn default() -> Self {
        Announce {
            bird_socket: PathBuf::from(DEFAULT_BIRD_SOCKET),
            routes_file: PathBuf::from(DEFAULT_ROUTES_FILE),
            min_healthy_backends: 1,
            drain_time: Duration::from_secs(5),
        }
    }
}
