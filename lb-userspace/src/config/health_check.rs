//! The `[vip.health]` checks: what a probe does, how often, and how many results in a
//! row change a backend's state.

use serde::{Deserialize, Serialize};

use super::is_default;

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
