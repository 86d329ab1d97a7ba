//! The flow sweeper: every quarter of `flow_idle_timeout` (1 to 30 s) it deletes idle
//! flow entries and makes stateless again the changed slots that no longer need state
//! (`Maps::sweep_flows`), in its turn like any change, so a sweep never races a table
//! install. What it found feeds `xlb stats` and `/metrics`.

use std::{sync::Arc, time::Duration};

use tracing::{debug, warn};

use super::state::{Shared, lock};
use crate::dataplane::FlowSweep;

/// The latest sweep and the totals since the daemon started.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sweeps {
    pub last: FlowSweep,
    pub deleted: u64,
    pub cleared: u64,
}

/// How often the sweeper runs for `idle_timeout` seconds.
pub(crate) fn interval(idle_timeout: u32) -> Duration {
    Duration::from_secs(u64::from(idle_timeout).div_ceil(4).clamp(1, 30))
}

pub(crate) async fn sweeper(d: Arc<Shared>) {
    let idle_ns = u64::from(d.settings.flow_idle_timeout) * 1_000_000_000;
    let mut tick = tokio::time::interval(interval(d.settings.flow_idle_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if d.stopping() {
            return;
        }
        match d.turn().await.run(move |c| c.sweep_flows(idle_ns)).await {
            Ok(Ok(sweep)) => {
                if sweep.deleted + sweep.cleared > 0 {
                    debug!(
                        "flow sweep: {} entries, {} deleted; {} slots made stateless, {} still changed",
                        sweep.entries, sweep.deleted, sweep.cleared, sweep.changed
                    );
                }
                let mut s = lock(&d.sweeps);
                s.last = sweep;
                s.deleted += sweep.deleted as u64;
                s.cleared += sweep.cleared as u64;
            }
            Ok(Err(e)) => warn!("flow sweep failed: {e}"),
            Err(e) => warn!("flow sweep did not run: {e}"),
        }
    }
}
