//! A counter sample in the Prometheus text exposition format (0.0.4), written by
//! `prometheus-client` so names, escaping and `_total` suffixes follow the format.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::rates::Sample;
use crate::{controller::BackendStatsView, watch::Observed};

pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What the daemon itself keeps, besides the counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct Daemon {
    /// Per VIP, new flows over the observation window (`watch::observed`).
    pub observed: BTreeMap<String, Observed>,
    /// Watches that rolled their change back.
    pub auto_rollbacks: u64,
    /// Finished rollouts by outcome.
    pub rollouts: BTreeMap<&'static str, u64>,
    /// The last health probe round's duration.
    pub health_round: Option<Duration>,
    /// `xlb trace` clients attached now.
    pub trace_clients: usize,
    /// Table identity and announcement, for comparing the hosts of a fleet.
    pub fleet: super::fleet_metrics::Fleet,
    /// The flow table (none if its maps could not be read).
    pub flows: Option<super::flows::FlowsView>,
}

/// The `/metrics` body for `sample` and the daemon's own state `daemon`.
pub(crate) fn render(sample: Arc<Sample>, daemon: Daemon) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(daemon.fleet.clone()));
    if let Some(flows) = daemon.flows.clone() {
        registry.register_collector(Box::new(flows));
    }
    registry.register_collector(Box::new(Metrics(sample, daemon)));
    let mut out = String::new();
    #[expect(
        clippy::let_underscore_must_use,
        reason = "writing to a String cannot fail, and every value here encodes"
    )]
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Metrics(Arc<Sample>, Daemon);

/// A value of each backend, for one metric family.
type PerBackend = fn(&BackendStatsView) -> Option<Value>;

enum Value {
    Counter(u64),
    Int(i64),
    Float(f64),
}

/// Counters are named without `_total`: the encoder appends it to counters.
const BACKEND_METRICS: [(&str, &str, MetricType, PerBackend); 8] = [
    (
        "xlb_backend_packets",
        "Packets sent to the backend.",
        MetricType::Counter,
        |b| Some(Value::Counter(b.packets)),
    ),
    (
        "xlb_backend_bytes",
        "Bytes sent to the backend.",
        MetricType::Counter,
        |b| Some(Value::Counter(b.bytes)),
    ),
    (
        "xlb_backend_new_flows",
        "New flows assigned to the backend.",
        MetricType::Counter,
        |b| Some(Value::Counter(b.new_flows)),
    ),
    (
        "xlb_backend_weight",
        "The backend's configured weight.",
        MetricType::Gauge,
        |b| Some(Value::Int(i64::from(b.weight))),
    ),
    (
        "xlb_backend_table_share",
        "The backend's share of its VIP's table: the share of new flows it gets.",
        MetricType::Gauge,
        |b| Some(Value::Float(b.table_share)),
    ),
    (
        "xlb_backend_effective_weight",
        "The weight the backend's table was built from: 0 while down or unresolved, part of its weight in slow start.",
        MetricType::Gauge,
        |b| Some(Value::Int(i64::from(b.effective_weight))),
    ),
    (
        "xlb_backend_up",
        "1 if the backend's health checks pass (after rise/fall), else 0 (VIPs with checks only).",
        MetricType::Gauge,
        |b| b.healthy.map(|h| Value::Int(i64::from(h))),
    ),
    (
        "xlb_backend_mac_resolved",
        "1 if the backend can be forwarded to: it has a MAC (l2-dsr), or it is reached by its route (ipip); else 0 (unresolved: no slot, no traffic).",
        MetricType::Gauge,
        |b| {
            Some(Value::Int(i64::from(
                b.mac.is_some() || b.mac_source == "route",
            )))
        },
    ),
];

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &self.0;
        ConstGauge::new(i64::try_from(s.generation).unwrap_or(i64::MAX)).encode(
            enc.encode_descriptor(
                "xlb_generation",
                "The generation the data plane runs (0 before the first).",
                None,
                MetricType::Gauge,
            )?,
        )?;
        for (name, help, kind, value) in BACKEND_METRICS {
            let rows: Vec<_> = s
                .vips
                .iter()
                .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
                .filter_map(|(v, b)| value(b).map(|x| (v, b, x)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut family = enc.encode_descriptor(name, help, None, kind)?;
            for (v, b, x) in rows {
                let labels = [("vip", v.vip.as_str()), ("backend", b.backend.as_str())];
                let m = family.encode_family(&labels)?;
                match x {
                    Value::Counter(n) => ConstCounter::new(n).encode(m)?,
                    Value::Int(i) => ConstGauge::new(i).encode(m)?,
                    Value::Float(f) => ConstGauge::new(f).encode(m)?,
                }
            }
        }
        // The MAC each backend is reached at, as an info metric: a MAC that changes shows
        // as a new series, an unresolved backend as none.
        let macs: Vec<_> = s
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
            .filter_map(|(v, b)| Some((v, b, b.mac.as_deref()?)))
            .collect();
        if !macs.is_empty() {
            let mut family = enc.encode_descriptor(
                "xlb_backend_mac_info",
                "The MAC frames to the backend are sent to, and where it came from (config or neighbour).",
                None,
                MetricType::Gauge,
            )?;
            for (v, b, mac) in macs {
                let labels = [
                    ("vip", v.vip.as_str()),
                    ("backend", b.backend.as_str()),
                    ("mac", mac),
                    ("source", b.mac_source.as_str()),
                ];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut drops = enc.encode_descriptor(
                "xlb_vip_drops",
                "Packets to the VIP dropped for want of a live backend in the slot, or (ipip) of a route, next-hop neighbour, forwarding or outer source to reach it (malformed packets are counted per reason in xlb_packets_total).",
                None,
                MetricType::Counter,
            )?;
            for v in &s.vips {
                ConstCounter::new(v.drops)
                    .encode(drops.encode_family(&[("vip", v.vip.as_str())])?)?;
            }
        }
        let mut stateful = enc.encode_descriptor(
            "xlb_vip_stateful_packets",
            "Packets to the VIP forwarded from a changed slot, which consults the flow table; the rest of its packets took the stateless path.",
            None,
            MetricType::Counter,
        )?;
        for v in &s.vips {
            ConstCounter::new(v.stateful)
                .encode(stateful.encode_family(&[("vip", v.vip.as_str())])?)?;
        }
        if s.vips.iter().any(|v| v.checked) {
            let mut panic = enc.encode_descriptor(
                "xlb_vip_panic",
                "1 while fewer than panic_threshold of the VIP's weighted backends are up: no more backends are taken out for health (VIPs with checks only).",
                None,
                MetricType::Gauge,
            )?;
            for v in s.vips.iter().filter(|v| v.checked) {
                ConstGauge::new(i64::from(v.panic.is_some()))
                    .encode(panic.encode_family(&[("vip", v.vip.as_str())])?)?;
            }
        }
        let d = &self.1;
        let shares: Vec<(&str, &str, f64)> = d
            .observed
            .iter()
            .flat_map(|(v, o)| {
                o.shares
                    .iter()
                    .map(move |(b, (seen, _))| (v.as_str(), b.as_str(), *seen))
            })
            .collect();
        if !shares.is_empty() {
            let mut family = enc.encode_descriptor(
                "xlb_backend_observed_share",
                "The backend's share of its VIP's new flows over the observation window (absent below 100 new flows).",
                None,
                MetricType::Gauge,
            )?;
            for (v, b, seen) in shares {
                ConstGauge::new(seen)
                    .encode(family.encode_family(&[("vip", v), ("backend", b)])?)?;
            }
        }
        let drifts: Vec<(&str, f64)> = d
            .observed
            .iter()
            .filter_map(|(v, o)| Some((v.as_str(), o.drift()?)))
            .collect();
        if !drifts.is_empty() {
            let mut family = enc.encode_descriptor(
                "xlb_vip_share_drift",
                "Largest |observed - table| share over the VIP's backends in the observation window.",
                None,
                MetricType::Gauge,
            )?;
            for (v, drift) in drifts {
                ConstGauge::new(drift).encode(family.encode_family(&[("vip", v)])?)?;
            }
        }
        ConstCounter::new(d.auto_rollbacks).encode(enc.encode_descriptor(
            "xlb_auto_rollbacks",
            "Watched changes that breached their watch and were rolled back by the daemon.",
            None,
            MetricType::Counter,
        )?)?;
        let mut rollouts = enc.encode_descriptor(
            "xlb_rollouts",
            "Finished stepped rollouts, by outcome.",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in &d.rollouts {
            ConstCounter::new(*n).encode(rollouts.encode_family(&[("outcome", *outcome)])?)?;
        }
        ConstGauge::new(i64::try_from(d.trace_clients).unwrap_or(i64::MAX)).encode(
            enc.encode_descriptor(
                "xlb_trace_clients",
                "`xlb trace` clients attached now; while above 0 the program reports decisions.",
                None,
                MetricType::Gauge,
            )?,
        )?;
        if let Some(t) = d.health_round {
            ConstGauge::new(t.as_secs_f64()).encode(enc.encode_descriptor(
                "xlb_health_round_seconds",
                "How long the last health check round took (all backends are probed at once).",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if !s.reasons.is_empty() {
            let mut packets = enc.encode_descriptor(
                "xlb_packets",
                "Packets the XDP program saw, by verdict reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &s.reasons {
                ConstCounter::new(*n).encode(packets.encode_family(&[("reason", *reason)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::VipStatsView;

    fn backend(name: &str, healthy: Option<bool>) -> BackendStatsView {
        BackendStatsView {
            backend: name.into(),
            id: 1,
            address: "198.18.0.11".into(),
            mac: Some("02:00:00:00:00:01".into()),
            mac_source: "neighbour".into(),
            weight: 3,
            effective_weight: if healthy == Some(false) { 0 } else { 3 },
            held: (healthy == Some(false)).then(|| "down".into()),
            table_share: 0.25,
            healthy,
            confirmed: None,
            last_probe: None,
            packets: 10,
            bytes: 1500,
            new_flows: 2,
        }
    }

    fn vip(name: &str, backends: Vec<BackendStatsView>) -> VipStatsView {
        VipStatsView {
            vip: name.into(),
            label: name.into(),
            id: 1,
            generation: 4,
            packets: 10,
            bytes: 1500,
            new_flows: 2,
            drops: 7,
            stateful: 3,
            checked: backends.iter().any(|b| b.healthy.is_some()),
            panic: None,
            backends,
        }
    }

    /// A scrape with every family the daemon exports present.
    fn full_scrape() -> String {
        let daemon = Daemon {
            observed: [(
                "web".to_string(),
                Observed {
                    flows: 200,
                    shares: [
                        ("b1".to_string(), (0.6, 0.5)),
                        ("b2".to_string(), (0.4, 0.5)),
                    ]
                    .into(),
                },
            )]
            .into(),
            auto_rollbacks: 1,
            rollouts: [("completed", 2), ("rolled_back", 0)].into(),
            health_round: Some(Duration::from_millis(250)),
            trace_clients: 2,
            fleet: Default::default(),
            flows: Some(crate::daemon::flows::FlowsView {
                capacity: 1 << 20,
                entries: 12,
                changed_slots: 40,
                inserts: 30,
                refused_full: 1,
                refused_rate: 2,
                deleted: 18,
                cleared: 9,
                ..Default::default()
            }),
        };
        render(
            Arc::new(Sample {
                generation: 4,
                vips: vec![
                    vip(
                        "web",
                        vec![backend("b1", Some(true)), backend("b2", Some(false))],
                    ),
                    vip("dns", vec![backend("d1", None)]),
                ],
                reasons: vec![("forwarded", 12), ("pass-not-ip", 3)],
                flow_table: None,
            }),
            daemon,
        )
    }

    #[test]
    fn names_labels_and_values_are_the_scraped_ones() {
        let text = full_scrape();
        for line in [
            "# TYPE xlb_generation gauge\nxlb_generation 4\n",
            "# TYPE xlb_backend_packets_total counter\n",
            "xlb_backend_packets_total{vip=\"web\",backend=\"b1\"} 10\n",
            "xlb_backend_bytes_total{vip=\"dns\",backend=\"d1\"} 1500\n",
            "xlb_backend_new_flows_total{vip=\"web\",backend=\"b2\"} 2\n",
            "# TYPE xlb_backend_weight gauge\n",
            "xlb_backend_weight{vip=\"web\",backend=\"b1\"} 3\n",
            "xlb_backend_table_share{vip=\"web\",backend=\"b1\"} 0.25\n",
            "xlb_backend_up{vip=\"web\",backend=\"b1\"} 1\n",
            "xlb_backend_up{vip=\"web\",backend=\"b2\"} 0\n",
            "xlb_backend_effective_weight{vip=\"web\",backend=\"b2\"} 0\n",
            "xlb_backend_effective_weight{vip=\"web\",backend=\"b1\"} 3\n",
            "# TYPE xlb_vip_panic gauge\nxlb_vip_panic{vip=\"web\"} 0\n",
            "xlb_backend_observed_share{vip=\"web\",backend=\"b1\"} 0.6\n",
            "# TYPE xlb_vip_share_drift gauge\n",
            "# TYPE xlb_auto_rollbacks_total counter\nxlb_auto_rollbacks_total 1\n",
            "xlb_rollouts_total{outcome=\"completed\"} 2\n",
            "xlb_rollouts_total{outcome=\"rolled_back\"} 0\n",
            "# TYPE xlb_trace_clients gauge\nxlb_trace_clients 2\n",
            "xlb_health_round_seconds 0.25\n",
            "# TYPE xlb_vip_drops_total counter\nxlb_vip_drops_total{vip=\"web\"} 7\n",
            "# TYPE xlb_packets_total counter\n",
            "xlb_packets_total{reason=\"forwarded\"} 12\n",
            "xlb_backend_mac_resolved{vip=\"web\",backend=\"b1\"} 1\n",
            "xlb_backend_mac_info{vip=\"web\",backend=\"b1\",mac=\"02:00:00:00:00:01\",source=\"neighbour\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        // Only VIPs with health checks have health gauges.
        assert!(!text.contains("xlb_backend_up{vip=\"dns\""), "{text}");
        assert!(!text.contains("xlb_vip_panic{vip=\"dns\""), "{text}");
    }

    #[test]
    fn a_sample_without_vips_still_has_the_generation() {
        let text = render(Arc::new(Sample::default()), Daemon::default());
        assert!(text.contains("xlb_generation 0\n"), "{text}");
        assert!(!text.contains("xlb_backend_"), "{text}");
    }

    /// Every metric examples/grafana/xlb.json queries is one the daemon exports: a renamed
    /// metric cannot leave a dashboard panel silently empty.
    #[test]
    fn the_grafana_dashboard_queries_only_exported_metrics() {
        let exported: std::collections::BTreeSet<String> = full_scrape()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/grafana/xlb.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap())
                .unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"));
        let mut exprs = Vec::new();
        collect_exprs(&dashboard, &mut exprs);
        assert!(exprs.len() >= 10, "{path}: only {} queries", exprs.len());
        let mut used = std::collections::BTreeSet::new();
        for expr in &exprs {
            for name in metric_names(expr) {
                assert!(
                    exported.contains(&name),
                    "{path}: {expr:?} queries {name}, which the daemon does not export \
                     (exported: {exported:?})"
                );
                used.insert(name);
            }
        }
        for needed in [
            "xlb_backend_packets_total",
            "xlb_backend_table_share",
            "xlb_backend_observed_share",
            "xlb_backend_up",
            "xlb_packets_total",
            "xlb_vip_drops_total",
            "xlb_generation",
            "xlb_auto_rollbacks_total",
        ] {
            assert!(used.contains(needed), "{path} has no panel over {needed}");
        }
    }

    /// Every `expr` (panel targets and annotations) in a Grafana dashboard.
    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    /// The `xlb_...` identifiers of a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("xlb_"))
            .map(str::to_string)
            .collect()
    }
}
