//! Health state, pure: probe results in, which backends are up out. The daemon probes
//! (`daemon::health`) and feeds each round here with the time; the controller turns the
//! backends that are down into effective weight 0 (`controller::failover`).
//!
//! - A backend goes down after `fall` failed probes in a row and comes back after `rise`
//!   good ones. Until it is probed it counts as up; one that the running generation holds
//!   down starts down (a restart does not hand a dead backend its share back).
//! - Flap damping: a backend that went down `n` times within `FLAP_WINDOW` needs
//!   `rise * 2^(n-1)` good probes in a row (the factor capped at `MAX_DAMPING`) to come
//!   back. Going down is never delayed; coming back is, for a backend that keeps failing.
//!   This bounds the generations a flapping backend causes (docs/control-plane.md).

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use crate::{config::HealthCheck, guard::Health};

/// How long a backend's past downs count towards its damping.
pub const FLAP_WINDOW: Duration = Duration::from_secs(300);
/// Largest factor by which damping multiplies `rise`.
pub const MAX_DAMPING: u32 = 64;

/// One probe's result: how long it took, or why it failed.
pub type ProbeResult = Result<Duration, String>;

/// One round's results, by (VIP, backend).
pub type Probes = BTreeMap<(String, String), ProbeResult>;

/// What the checks know about one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendHealth {
    pub up: bool,
    /// Probes in a row with the result opposite to `up` (towards a change).
    pub streak: u32,
    /// The last probe's result: `ok` or the failure.
    pub last: Option<String>,
    /// A probe since the tracker started has agreed with `up` (a good probe while up, or
    /// a change of state): `up` is a verdict, not the starting assumption.
    pub confirmed: bool,
    /// When it went down within `FLAP_WINDOW`, oldest first (time since the tracker
    /// started).
    downs: VecDeque<Duration>,
}

impl BackendHealth {
    fn new(up: bool) -> Self {
        BackendHealth {
            up,
            streak: 0,
            last: None,
            confirmed: false,
            downs: VecDeque::new(),
        }
    }

    /// Good probes in a row this backend needs to come back, at `now`.
    pub fn rise_needed(&self, check: &HealthCheck, now: Duration) -> u32 {
        let recent = self
            .downs
            .iter()
            .filter(|&&t| now.saturating_sub(t) < FLAP_WINDOW)
            .count() as u32;
        let damping = 1u32
            .checked_shl(recent.saturating_sub(1))
            .unwrap_or(MAX_DAMPING)
            .min(MAX_DAMPING);
        check.rise.max(1).saturating_mul(damping)
    }
}

/// A backend changing state.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub vip: String,
    pub backend: String,
    pub up: bool,
    /// `3 failed probes: connect: connection refused`, `2 good probes`.
    pub why: String,
}

impl Transition {
    pub fn key(&self) -> String {
        crate::history::Ids::backend_key(&self.vip, &self.backend)
    }
}

/// Every checked backend's state.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    backends: BTreeMap<(String, String), BackendHealth>,
}

impl Tracker {
    /// A tracker whose backends in `down` ("vip/backend") start down.
    pub fn starting_down<'a>(down: impl IntoIterator<Item = &'a String>) -> Self {
        let mut t = Tracker::default();
        for key in down {
            if let Some((vip, backend)) = key.split_once('/') {
                t.backends.insert(
                    (vip.to_string(), backend.to_string()),
                    BackendHealth::new(false),
                );
            }
        }
        t
    }

    /// Feeds one round: `probes` were made under `checks` (VIP -> its check) at `now`.
    /// Backends no longer probed are forgotten. Returns the backends that changed state.
    pub fn observe(
        &mut self,
        checks: &BTreeMap<String, HealthCheck>,
        probes: &Probes,
        now: Duration,
    ) -> Vec<Transition> {
        self.backends.retain(|(vip, backend), _| {
            checks.contains_key(vip) && probes.contains_key(&(vip.clone(), backend.clone()))
        });
        let mut out = Vec::new();
        for ((vip, backend), result) in probes {
            let Some(check) = checks.get(vip) else {
                continue;
            };
            let b = self
                .backends
                .entry((vip.clone(), backend.clone()))
                .or_insert_with(|| BackendHealth::new(true));
            b.last = Some(match result {
                Ok(_) => "ok".into(),
                Err(e) => e.clone(),
            });
            if result.is_ok() == b.up {
                b.streak = 0;
                b.confirmed = true;
                continue;
            }
            b.streak += 1;
            let needed = if b.up {
                check.fall.max(1)
            } else {
                b.rise_needed(check, now)
            };
            if b.streak < needed {
                continue;
            }
            b.up = !b.up;
            b.streak = 0;
            b.confirmed = true;
            let why = match result {
                Ok(_) => format!("{needed} good probes"),
                Err(e) => format!("{needed} failed probes: {e}"),
            };
            if !b.up {
                b.downs.push_back(now);
                while b
                    .downs
                    .front()
                    .is_some_and(|&t| now.saturating_sub(t) >= FLAP_WINDOW)
                {
                    b.downs.pop_front();
                }
            }
            out.push(Transition {
                vip: vip.clone(),
                backend: backend.clone(),
                up: b.up,
                why,
            });
        }
        out
    }

    /// Up or down, by (VIP, backend), for the guardrails; unprobed backends are absent.
    pub fn health(&self) -> Health {
        self.backends
            .iter()
            .map(|(k, b)| (k.clone(), b.up))
            .collect()
    }

    pub fn backend(&self, vip: &str, backend: &str) -> Option<&BackendHealth> {
        self.backends.get(&(vip.to_string(), backend.to_string()))
    }

    /// "vip/backend" of every backend that is down.
    pub fn down(&self) -> impl Iterator<Item = String> + '_ {
        self.backends
            .iter()
            .filter(|(_, b)| !b.up)
            .map(|((v, b), _)| crate::history::Ids::backend_key(v, b))
    }
}

#[cfg(test)]
mod tests;
