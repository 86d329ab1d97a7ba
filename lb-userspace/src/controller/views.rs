//! What the controller shows of the running generation: which backend a flow gets
//! (`explain`) and the counters of every VIP and backend (`stats`).

use std::net::SocketAddr;

use lb_common::{
    BackendStats, FlowKey, Slot, flow_hash, table_slot, unknown_flow_follows_previous,
};
use serde::{Deserialize, Serialize};

use crate::history::Ids;

use super::{
    ApplyError, Controller, Panic,
    install::{addr16, family, vip_key},
    macs,
};

/// The client end of a flow key.
fn client_of(key: &FlowKey) -> SocketAddr {
    let port = u16::from_be(key.sport_be);
    if key.family == lb_common::FAMILY_V6 {
        SocketAddr::from((key.src, port))
    } else {
        SocketAddr::from(([key.src[0], key.src[1], key.src[2], key.src[3]], port))
    }
}

impl Controller {
    /// Which backend a flow from `client` to `vip` gets, and why.
    pub fn explain(&self, vip: &str, client: SocketAddr) -> Result<Explain, ApplyError> {
        let record = self
            .current
            .as_ref()
            .ok_or_else(|| ApplyError::NotFound("no generation is applied yet".into()))?;
        let v = record
            .config
            .vips
            .iter()
            .find(|v| v.name == vip || v.address == vip)
            .ok_or_else(|| ApplyError::NotFound(format!("no VIP named {vip:?}")))?;
        let key = vip_key(v).ok_or_else(|| ApplyError::NotFound("bad VIP".into()))?;
        if family(client.ip()) != key.family {
            return Err(ApplyError::NotFound(format!(
                "client {client} is not of VIP {}'s address family",
                v.name
            )));
        }
        let flow = FlowKey {
            src: addr16(client.ip()),
            dst: key.addr,
            sport_be: client.port().to_be(),
            dport_be: key.port_be,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        let vip_id = record.ids.vips[&v.name];
        let name_of = |id: u32| {
            record
                .ids
                .backends
                .iter()
                .filter(|&(_, &bid)| bid == id)
                .find_map(|(k, _)| k.strip_prefix(v.name.as_str())?.strip_prefix('/'))
                .map(str::to_string)
        };
        let seed = self.maps.config()?.hash_seed;
        let (generation, slots) = self.maps.table_slots(vip_id)?;
        let hash = flow_hash(&flow, seed);
        let slot = table_slot(hash, slots.len().max(1) as u32);
        let stored = Slot::unpack(slots.get(slot as usize).copied().unwrap_or(0));
        let explain = |backend_id: u32, why: &str, generation: u32| Explain {
            vip: v.name.clone(),
            client: client.to_string(),
            backend: name_of(backend_id).unwrap_or_else(|| "?".into()),
            backend_id,
            why: why.into(),
            generation: u64::from(generation),
            slot: Some(slot),
            hash: Some(hash),
            slot_owner: Some(name_of(stored.owner).unwrap_or_else(|| "?".into())),
            slot_previous: stored
                .is_changed()
                .then(|| name_of(stored.previous).unwrap_or_else(|| "?".into())),
        };
        if !stored.is_changed() {
            return Ok(explain(stored.owner, "table-slot", generation));
        }
        // A changed slot: the flow table decides, as in the program's `flowstate`.
        if let Some(entry) = self.maps.flow(&flow)
            && self
                .maps
                .backend(entry.backend_id)
                .is_ok_and(|b| b.serves(&flow))
        {
            return Ok(explain(entry.backend_id, "flow-entry", entry.generation));
        }
        let serving = self
            .maps
            .backend(stored.previous)
            .is_ok_and(|b| b.is_live_for(vip_id));
        let now_s =
            u32::try_from(crate::dataplane::monotonic_ns() / 1_000_000_000).unwrap_or(u32::MAX);
        let grace = self.maps.table_udp_grace(vip_id)?;
        // Without a SYN flag to go by, a TCP flow is explained as a new connection.
        let to_previous = unknown_flow_follows_previous(key.proto, true, now_s, grace);
        let backend_id = if serving && to_previous {
            stored.previous
        } else {
            stored.owner
        };
        Ok(explain(backend_id, "changed-slot", generation))
    }

    /// Flow entries of VIP `vip` (name or address; none: all) and backend `backend`,
    /// sorted by VIP and client, `limit` (at most [`MAX_FLOWS_PAGE`]) after `offset`.
    pub fn flows(
        &self,
        vip: Option<&str>,
        backend: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<FlowsPage, ApplyError> {
        let record = self
            .current
            .as_ref()
            .ok_or_else(|| ApplyError::NotFound("no generation is applied yet".into()))?;
        let vips: Vec<(&crate::config::Vip, lb_common::VipKey)> = record
            .config
            .vips
            .iter()
            .filter(|v| vip.is_none_or(|x| v.name == x || v.address == x))
            .filter_map(|v| Some((v, vip_key(v)?)))
            .collect();
        if let Some(x) = vip
            && vips.is_empty()
        {
            return Err(ApplyError::NotFound(format!("no VIP named {x:?}")));
        }
        if let Some(b) = backend
            && !vips
                .iter()
                .any(|(v, _)| v.backends.iter().any(|x| x.name == b))
        {
            return Err(ApplyError::NotFound(format!(
                "no backend named {b:?}{}",
                vip.map(|v| format!(" in VIP {v}")).unwrap_or_default()
            )));
        }
        let now = crate::dataplane::monotonic_ns();
        let all = self.maps.flows();
        let total = all.len();
        let mut rows: Vec<FlowRow> = all
            .into_iter()
            .filter_map(|(key, value)| {
                let (v, _) = vips.iter().find(|(_, k)| k.matches(&key))?;
                let name = v
                    .backends
                    .iter()
                    .find(|b| record.ids.backend(&v.name, &b.name) == Some(value.backend_id))
                    .map(|b| b.name.clone());
                if backend.is_some_and(|b| name.as_deref() != Some(b)) {
                    return None;
                }
                Some(FlowRow {
                    client: client_of(&key).to_string(),
                    vip: v.name.clone(),
                    backend: name.unwrap_or_else(|| "?".into()),
                    backend_id: value.backend_id,
                    generation: value.generation,
                    idle_s: now.saturating_sub(value.last_seen_ns) as f64 / 1e9,
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.vip, &a.client).cmp(&(&b.vip, &b.client)));
        let matched = rows.len();
        let flows = rows
            .into_iter()
            .skip(offset)
            .take(limit.min(MAX_FLOWS_PAGE))
            .collect();
        Ok(FlowsPage {
            matched,
            total,
            offset,
            flows,
        })
    }

    /// Counters of every backend and VIP of the running generation.
    pub fn stats(&self) -> Result<Vec<VipStatsView>, ApplyError> {
        let Some(record) = &self.current else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for vip in &record.config.vips {
            let vip_id = record.ids.vips[&vip.name];
            let vs = self.maps.vip_stats(vip_id)?;
            let rows = self
                .current_plan
                .as_ref()
                .and_then(|p| p.vip(&vip.name))
                .map_or(&[][..], |p| &p.rows[..]);
            let mut backends = Vec::new();
            for b in &vip.backends {
                let id = record.ids.backend(&vip.name, &b.name).unwrap_or(0);
                let s: BackendStats = self.maps.backend_stats(id)?;
                let row = rows.iter().find(|r| r.backend == b.name);
                let mac = record.mac(&vip.name, &b.name);
                let key = Ids::backend_key(&vip.name, &b.name);
                let probe = self.tracker.backend(&vip.name, &b.name);
                let held = if record.unresolved.contains(&key) {
                    Some("unresolved".to_string())
                } else if record.down.contains(&key) {
                    Some("down".to_string())
                } else {
                    record.ramp.get(&key).map(|p| format!("slow start {p}%"))
                };
                backends.push(BackendStatsView {
                    backend: b.name.clone(),
                    id,
                    address: b.address.clone(),
                    mac: mac.map(macs::show_mac),
                    mac_source: if vip.forwarding == crate::config::Forwarding::Ipip {
                        "route"
                    } else if mac.is_none() {
                        "unresolved"
                    } else if b.mac == crate::config::MAC_FROM_NEIGHBOUR {
                        "neighbour"
                    } else {
                        "config"
                    }
                    .into(),
                    weight: b.weight(),
                    effective_weight: row.and_then(|r| r.weight_after).unwrap_or(0),
                    held,
                    table_share: row.map_or(0.0, |r| r.share_after),
                    healthy: vip.health.as_ref().map(|_| probe.is_none_or(|h| h.up)),
                    confirmed: vip
                        .health
                        .as_ref()
                        .map(|_| probe.is_some_and(|h| h.confirmed)),
                    last_probe: probe.and_then(|h| h.last.clone()),
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                });
            }
            out.push(VipStatsView {
                vip: vip.name.clone(),
                label: vip.label(),
                id: vip_id,
                generation: self.maps.table_generation(vip_id).map_or(0, u64::from),
                packets: vs.packets,
                bytes: vs.bytes,
                new_flows: vs.new_flows,
                drops: vs.drops,
                stateful: vs.stateful,
                checked: vip.health.is_some(),
                panic: self.panic.get(&vip.name).cloned(),
                backends,
            });
        }
        Ok(out)
    }
}

/// Most entries one `xlb flows` answer lists.
pub const MAX_FLOWS_PAGE: usize = 10_000;

/// One page of `xlb flows`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowsPage {
    /// Entries that matched (the whole table was walked).
    pub matched: usize,
    /// Entries in the table.
    pub total: usize,
    pub offset: usize,
    pub flows: Vec<FlowRow>,
}

/// A flow entry, named.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowRow {
    pub client: String,
    pub vip: String,
    pub backend: String,
    pub backend_id: u32,
    /// Generation whose table was live when the entry was written.
    pub generation: u32,
    /// Seconds since the flow's last packet.
    pub idle_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Explain {
    pub vip: String,
    pub client: String,
    pub backend: String,
    pub backend_id: u32,
    /// "table-slot": the slot is stateless, so every packet of the flow goes to its
    /// owner; "flow-entry": the slot changed and the flow has an entry; "changed-slot":
    /// the slot changed and the flow has no entry (TCP: `backend` is where a new
    /// connection goes; its other packets go to `slot_previous` while that backend
    /// serves. UDP: `backend` per the grace window).
    pub why: String,
    pub generation: u64,
    pub slot: Option<u32>,
    pub hash: Option<u32>,
    /// The slot's owner: where new connections go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_owner: Option<String>,
    /// The slot's previous owner, while the slot is changed: the backend that flows
    /// older than the change, and without an entry, stay on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_previous: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipStatsView {
    pub vip: String,
    pub label: String,
    pub id: u32,
    /// Generation of the table the data plane is using.
    pub generation: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
    /// Forwarded packets whose slot was changed (the flow table was consulted); the
    /// rest took the stateless path.
    #[serde(default)]
    pub stateful: u64,
    /// The VIP has health checks.
    #[serde(default)]
    pub checked: bool,
    /// Too few backends up to take more out for health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<Panic>,
    pub backends: Vec<BackendStatsView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatsView {
    pub backend: String,
    pub id: u32,
    pub address: String,
    /// The MAC frames are sent to; none while unresolved.
    pub mac: Option<String>,
    /// `config` (explicit), `neighbour` (resolved) or `unresolved`.
    pub mac_source: String,
    pub weight: u32,
    /// The weight its table was built from: 0 while down or unresolved, part of it in
    /// slow start.
    #[serde(default)]
    pub effective_weight: u32,
    /// Why the effective weight is not the weight: `down`, `unresolved`, `slow start N%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    pub table_share: f64,
    /// Up (after rise/fall) for VIPs with health checks.
    pub healthy: Option<bool>,
    /// For VIPs with health checks: whether `healthy` rests on a probe since the daemon
    /// started (a backend starts up, or held down, until its probes say otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    /// The last probe's result: `ok` or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
