//! The metrics that compare the hosts of a fleet: each VIP's table identity (fingerprint,
//! generation, and the `hash_seed` and `table_size` a flow's slot depends on), and what
//! this host announces. Hosts behind one ECMP group must show the same fingerprint,
//! seed and size for a VIP, or a flow that moves between them changes backend.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use crate::{announce::View, history::Record};

/// What the fleet metrics are made of.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fleet {
    /// With `[daemon.announce]`.
    pub announce: Option<View>,
    pub running: Option<Arc<Record>>,
    pub hash_seed: u32,
    pub table_size: u32,
}

impl Collector for Fleet {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(r) = self.running.as_ref().filter(|r| !r.fingerprints.is_empty()) {
            let mut family = enc.encode_descriptor(
                "xlb_vip_table_info",
                "The VIP's installed table: its fingerprint (the same table gives the same one on every host), the generation, and the hash_seed and table_size that map flows to slots. Every host of an ECMP group must show the same fingerprint, hash_seed and table_size.",
                None,
                MetricType::Gauge,
            )?;
            let (generation, seed, size) = (
                r.generation.to_string(),
                self.hash_seed.to_string(),
                self.table_size.to_string(),
            );
            for (vip, fingerprint) in &r.fingerprints {
                let labels = [
                    ("vip", vip.as_str()),
                    ("fingerprint", fingerprint.as_str()),
                    ("generation", generation.as_str()),
                    ("hash_seed", seed.as_str()),
                    ("table_size", size.as_str()),
                ];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let Some(a) = &self.announce else {
            return Ok(());
        };
        let mut family = enc.encode_descriptor(
            "xlb_vip_announced",
            "1 while this host asks its routing daemon to announce the VIP's address, else 0 (with [daemon.announce]).",
            None,
            MetricType::Gauge,
        )?;
        for d in &a.vips {
            let address = d.address.to_string();
            let labels = [("vip", d.vip.as_str()), ("address", address.as_str())];
            ConstGauge::new(i64::from(d.announce)).encode(family.encode_family(&labels)?)?;
        }
        ConstGauge::new(i64::from(a.drained.is_some())).encode(enc.encode_descriptor(
            "xlb_host_drained",
            "1 while `xlb host drain` holds every VIP withdrawn.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(a.applied)).encode(enc.encode_descriptor(
            "xlb_announce_applied",
            "1 if the routing daemon took the last routes file, 0 while it refuses it or cannot be reached.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        announce::{Decision, Why},
        config::{Config, fixture},
        history::Source,
    };

    #[test]
    fn table_identity_and_announcement_are_exported() {
        let mut record = Record::fixture(
            7,
            Source::Startup {
                file: "xlb.toml".into(),
            },
            Config {
                vips: vec![fixture::vip("web", &[("b1", 1), ("b2", 1)])],
                ..Config::default()
            },
        );
        record.fingerprints.insert("web".into(), "00ff".into());
        let fleet = Fleet {
            announce: Some(View {
                drained: None,
                vips: vec![Decision {
                    vip: "web".into(),
                    address: "198.19.0.100".parse().unwrap(),
                    announce: true,
                    why: Why::Serving,
                }],
                routes: vec!["198.19.0.100".parse().unwrap()],
                applied: true,
                error: None,
            }),
            running: Some(Arc::new(record)),
            hash_seed: 42,
            table_size: 65537,
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(fleet));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "xlb_vip_table_info{vip=\"web\",fingerprint=\"00ff\",generation=\"7\",hash_seed=\"42\",table_size=\"65537\"} 1\n",
            "xlb_vip_announced{vip=\"web\",address=\"198.19.0.100\"} 1\n",
            "xlb_host_drained 0\n",
            "xlb_announce_applied 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn without_announce_or_generation_nothing_is_exported() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Fleet::default()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("xlb_"), "{text}");
    }
}
