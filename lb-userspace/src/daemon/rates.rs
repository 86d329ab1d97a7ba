//! The 1 s sampler: reads every counter once a second, turns the difference into
//! per-backend rates for `status` and `stats`, and keeps the reading for `/metrics`.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::state::{Shared, lock};
use crate::controller::{Controller, VipStatsView};

/// Per-backend rates over the last sampling interval.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
    pub new_flows_per_s: f64,
}

/// One reading of the counters and of what names them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub generation: u64,
    pub vips: Vec<VipStatsView>,
    /// Packets per verdict reason (`lb_common::Reason::name`); empty if unreadable.
    pub reasons: Vec<(&'static str, u64)>,
    /// The flow table's counters and capacity; none if unreadable.
    pub flow_table: Option<(lb_common::FlowStats, u32)>,
}

impl Sample {
    /// Reads the maps; `None` if the per-VIP counters cannot be read.
    pub(crate) fn read(c: &Controller) -> Option<Sample> {
        let vips = c.stats().ok()?;
        let reasons = c
            .maps()
            .reason_stats()
            .map(|r| r.iter().map(|(r, s)| (r.name(), s.packets)).collect())
            .unwrap_or_default();
        Some(Sample {
            generation: c.current().map_or(0, |r| r.generation),
            vips,
            reasons,
            flow_table: super::flows::read_table(c),
        })
    }
}

/// Rates between two readings `dt` seconds apart; a backend new in `now` rates 0.
fn rates(prev: &Sample, now: &Sample, dt: f64) -> BTreeMap<(String, String), Rates> {
    let dt = dt.max(1e-3);
    let mut out = BTreeMap::new();
    for v in &now.vips {
        for b in &v.backends {
            let old = prev
                .vips
                .iter()
                .find(|p| p.vip == v.vip)
                .and_then(|p| p.backends.iter().find(|x| x.id == b.id));
            let d = |new: u64, old: u64| new.saturating_sub(old) as f64 / dt;
            let r = old.map_or(Rates::default(), |o| Rates {
                packets_per_s: d(b.packets, o.packets),
                bytes_per_s: d(b.bytes, o.bytes),
                new_flows_per_s: d(b.new_flows, o.new_flows),
            });
            out.insert((v.vip.clone(), b.backend.clone()), r);
        }
    }
    out
}

/// How far back observed shares look when no watch is running.
const OBSERVE: Duration = Duration::from_secs(60);
/// Samples kept: enough for the longest watch window the ring covers.
const KEEP: Duration = Duration::from_secs(600);

/// Samples every second until the daemon stops; keeps the observed shares over the
/// running watch's window (since it began), else over the last `OBSERVE`, and never from
/// before the running generation took over.
pub(crate) async fn sampler(d: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<(Instant, Arc<Sample>)> = None;
    let mut ring: std::collections::VecDeque<(Instant, Arc<Sample>)> = Default::default();
    loop {
        tick.tick().await;
        let Ok(Some(now)) = d.turn().await.run(|c| Sample::read(c)).await else {
            continue;
        };
        let now = Arc::new(now);
        let t = Instant::now();
        if let Some((then, prev)) = &prev {
            *lock(&d.rates) = rates(prev, &now, t.duration_since(*then).as_secs_f64());
        }
        *lock(&d.sample) = Some(Arc::clone(&now));
        ring.push_back((t, Arc::clone(&now)));
        while ring
            .front()
            .is_some_and(|(at, _)| t.duration_since(*at) > KEEP)
        {
            ring.pop_front();
        }
        let watching = *lock(&d.watching);
        let since = match watching {
            Some((_, start, _)) => start.into_std(),
            None => t.checked_sub(OBSERVE).unwrap_or(t),
        };
        // The oldest sample at or after `since` of the generation running now: shares are
        // only compared with the table that was installed while the flows came.
        let base = ring
            .iter()
            .find(|(at, s)| *at >= since && s.generation == now.generation)
            .map_or(&now, |(_, s)| s);
        *lock(&d.observed) = crate::watch::observed(&base.vips, &now.vips);
        prev = Some((t, now));
    }
}
