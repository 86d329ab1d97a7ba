//! `xlb host drain` and `xlb host undrain`: the drain mark (kept in the state directory,
//! so it survives a reload, a restart and a teardown), the withdrawal it causes, and the
//! wait for this host's VIP traffic to stop, read from the per-VIP packet counters.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{announcer::Announcing, state::Shared};
use crate::{
    announce::{Drained, View, Why},
    api::Response,
};

/// How long BIRD may take to run a new routes file before drain or undrain gives up.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Traffic counts as stopped once the counters stay still this long.
const QUIET: Duration = Duration::from_secs(1);
/// How often the counters are read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// What `xlb host drain` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrainReport {
    /// From the request to BIRD running the routes file without this host's VIPs.
    pub withdrawn_ms: u64,
    /// The counters stayed still for `QUIET` before the timeout.
    pub quiet: bool,
    /// From the drain's start to the last change of the VIP counters seen (they are
    /// read every `POLL`); 0: none changed.
    pub last_packet_ms: u64,
    /// VIP packets counted since the drain began (before BIRD took the withdrawal too).
    pub packets_since: u64,
    pub timeout_ms: u64,
    pub view: View,
}

/// The announcement, or why `xlb host` has nothing to act on.
fn announcing(d: &Shared) -> Result<Arc<Announcing>, &'static str> {
    d.announcing.clone().ok_or(
        "this daemon announces nothing ([daemon.announce] is not in its config), so there \
         is nothing to withdraw; add [daemon.announce] and restart it",
    )
}

/// Waits until BIRD runs the routes of a decision made with the drain mark as it is now
/// (or `APPLY_WAIT` passes).
async fn applied(a: &Announcing, drained: bool, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        {
            let v = a.view();
            let wanted = crate::announce::routes(&v.vips);
            let done = v.applied && v.routes.iter().copied().eq(wanted.iter().copied());
            // Before the announcer's next turn, the decisions are the old mark's.
            let current = if drained {
                v.routes.is_empty()
            } else {
                v.vips.iter().all(|d| d.why != Why::Drained)
            };
            if done && current {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "BIRD has not taken the routes file within {within:?}: {}",
                    v.error.as_deref().unwrap_or("no answer yet")
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Packets to every VIP so far (the per-VIP counters).
async fn vip_packets(d: &Shared) -> Option<u64> {
    d.turn()
        .await
        .run(|c| c.stats().ok().map(|s| s.iter().map(|v| v.packets).sum()))
        .await
        .ok()
        .flatten()
}

/// Marks the host drained, withdraws every VIP, then waits until the VIP counters stay
/// still for `QUIET` or `timeout` passes.
pub(crate) async fn drain(d: &Arc<Shared>, timeout: Duration, user: String) -> Response {
    let a = match announcing(d) {
        Ok(a) => a,
        Err(e) => return Response::error(e),
    };
    let start = Instant::now();
    let Some(first) = vip_packets(d).await else {
        return Response::error("cannot read the VIP counters");
    };
    if a.drained().is_none() {
        let mark = Drained {
            since: crate::history::now(),
            user,
        };
        if let Err(e) = a.set_drained(Some(mark)) {
            return Response::error(e);
        }
    }
    if let Err(e) = applied(&a, true, timeout.clamp(POLL, APPLY_WAIT)).await {
        return Response::error(format!(
            "the host is marked drained, but {e}; `xlb status` shows the announcement"
        ));
    }
    let withdrawn = Instant::now();
    let (mut last, mut last_change) = (first, start);
    let quiet = loop {
        tokio::time::sleep(POLL).await;
        let now = vip_packets(d).await.unwrap_or(last);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        if last_change.elapsed() >= QUIET {
            break true;
        }
        if start.elapsed() >= timeout {
            break false;
        }
    };
    Response::data(DrainReport {
        withdrawn_ms: (withdrawn - start).as_millis() as u64,
        quiet,
        last_packet_ms: (last_change - start).as_millis() as u64,
        packets_since: last - first,
        timeout_ms: timeout.as_millis() as u64,
        view: a.view(),
    })
}

/// Clears the drain mark and waits until BIRD runs the routes the decision asks for.
pub(crate) async fn undrain(d: &Arc<Shared>) -> Response {
    let a = match announcing(d) {
        Ok(a) => a,
        Err(e) => return Response::error(e),
    };
    if let Err(e) = a.set_drained(None) {
        return Response::error(e);
    }
    match applied(&a, false, APPLY_WAIT).await {
        Ok(()) => Response::data(a.view()),
        Err(e) => Response::error(format!("the drain mark is gone, but {e}")),
    }
}
