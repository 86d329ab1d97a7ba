//! The flow sweeper: every quarter of `flow_idle_timeout` (1 to 30 s) it deletes idle
//! flow entries and makes stateless again the changed slots that no longer need state
//! (`Maps::sweep_flows`), in its turn like any change, so a sweep never races a table
//! install. What it found feeds `xlb stats` and `/metrics`.

use std::{fmt, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use serde::Serialize;
use tracing::{debug, warn};

use super::state::{Shared, lock};
use lb_common::FlowStats;

use crate::{controller::Controller, dataplane::FlowSweep};

/// The flow table as `xlb stats` and `/metrics` show it.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct FlowsView {
    /// Entries the table may hold.
    pub capacity: u32,
    /// Entries at the last sweep.
    pub entries: u64,
    /// Seconds since the last sweep (none: no sweep has finished yet).
    pub swept_s_ago: Option<f64>,
    /// Changed slots (over all VIPs) at the last sweep.
    pub changed_slots: u64,
    /// Entries written, ever (since the maps were created).
    pub inserts: u64,
    /// Entries refused because the table was full.
    pub refused_full: u64,
    /// Entries refused by the flood guard.
    pub refused_rate: u64,
    /// Entries the sweeper deleted since the daemon started.
    pub deleted: u64,
    /// Changed slots the sweeper made stateless since the daemon started.
    pub cleared: u64,
    pub idle_timeout_s: u32,
    /// How often the sweeper runs.
    pub sweep_every_s: u64,
    pub insert_rate: u32,
    pub udp_grace_s: u32,
}

/// The flow table's kernel counters and capacity, read with the controller.
pub(crate) fn read_table(c: &Controller) -> Option<(FlowStats, u32)> {
    Some((c.maps().flow_stats().ok()?, c.maps().flow_capacity().ok()?))
}

impl FlowsView {
    /// The kernel's side (`read_table`) with what the sweeper found.
    pub(crate) fn new((stats, capacity): (FlowStats, u32), d: &Shared) -> FlowsView {
        let sweeps = *lock(&d.sweeps);
        FlowsView {
            capacity,
            entries: sweeps.last.entries as u64,
            swept_s_ago: sweeps.at.map(|t| t.elapsed().as_secs_f64()),
            changed_slots: sweeps.last.changed as u64,
            inserts: stats.inserts,
            refused_full: stats.refused_full,
            refused_rate: stats.refused_rate,
            deleted: sweeps.deleted,
            cleared: sweeps.cleared,
            idle_timeout_s: d.settings.flow_idle_timeout,
            sweep_every_s: interval(d.settings.flow_idle_timeout).as_secs(),
            insert_rate: d.settings.flow_insert_rate,
            udp_grace_s: d.settings.udp_grace,
        }
    }
}

impl Collector for FlowsView {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauges = [
            (
                "xlb_flow_capacity",
                "Entries the flow table may hold (daemon.flow_capacity).",
                u64::from(self.capacity),
            ),
            (
                "xlb_flow_entries",
                "Flow entries at the last sweep: flows in changed slots only.",
                self.entries,
            ),
            (
                "xlb_flow_changed_slots",
                "Table slots, over all VIPs, that consult the flow table (at the last sweep).",
                self.changed_slots,
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
                .encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let counters = [
            (
                "xlb_flow_inserts",
                "Flow entries written by the program.",
                self.inserts,
            ),
            (
                "xlb_flow_entries_deleted",
                "Idle or unneeded flow entries the sweeper deleted since the daemon started.",
                self.deleted,
            ),
            (
                "xlb_flow_slots_cleared",
                "Changed slots the sweeper made stateless again since the daemon started.",
                self.cleared,
            ),
        ];
        for (name, help, v) in counters {
            ConstCounter::new(v).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let mut refused = enc.encode_descriptor(
            "xlb_flow_inserts_refused",
            "Flow entries not written: the table was full, or the flood guard's per-CPU rate was used up (the packet is forwarded all the same; nothing is evicted).",
            None,
            MetricType::Counter,
        )?;
        for (cause, v) in [("full", self.refused_full), ("rate", self.refused_rate)] {
            ConstCounter::new(v).encode(refused.encode_family(&[("cause", cause)])?)?;
        }
        Ok(())
    }
}

/// The latest sweep and the totals since the daemon started.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sweeps {
    pub last: FlowSweep,
    /// When the last sweep finished.
    pub at: Option<std::time::Instant>,
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
                s.at = Some(std::time::Instant::now());
                s.deleted += sweep.deleted as u64;
                s.cleared += sweep.cleared as u64;
            }
            Ok(Err(e)) => warn!("flow sweep failed: {e}"),
            Err(e) => warn!("flow sweep did not run: {e}"),
        }
    }
}
