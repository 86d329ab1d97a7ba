//! What a lab daemon's pinned maps hold, read with bpftool (and aya for the tables):
//! the state a test checks after a change (`table_slots` names ids through `xlb status`).

use std::net::IpAddr;

use super::Daemon;

impl Daemon {
    /// bpftool's JSON dump of pinned map `name`.
    pub fn dump(&self, name: &str) -> serde_json::Value {
        crate::bpftool_dump(&self.pins.path().join(name))
    }

    /// Packets the program counted under `reason`, read with bpftool.
    pub fn reason(&self, reason: lb_common::Reason) -> u64 {
        crate::bpftool_sum(
            &self.dump(lb_common::maps::REASON_STATS),
            reason.index(),
            "packets",
        )
    }

    /// Everything that decides where packets go, as bpftool dumps it: VIPs and backends.
    pub fn routing_snapshot(&self) -> (serde_json::Value, serde_json::Value) {
        (
            self.dump(lb_common::maps::VIPS),
            self.dump(lb_common::maps::BACKENDS),
        )
    }

    /// The `xlb_vips` keys as bpftool prints them: (address, port, IP protocol number).
    pub fn vip_keys(&self) -> Vec<(IpAddr, u16, u64)> {
        let dump = self.dump(lb_common::maps::VIPS);
        let mut keys: Vec<_> = dump
            .as_array()
            .expect("bpftool dump")
            .iter()
            .map(|e| {
                let k = &e["formatted"]["key"];
                let port_be = k["port_be"].as_u64().expect("port_be") as u16;
                (
                    dumped_addr(k),
                    u16::from_be(port_be),
                    k["proto"].as_u64().expect("proto"),
                )
            })
            .collect();
        keys.sort();
        keys
    }

    /// The live entries of `xlb_backends` as bpftool prints them: (id, address, MAC).
    pub fn live_backends(&self) -> Vec<(u64, IpAddr, [u8; 6])> {
        let dump = self.dump(lb_common::maps::BACKENDS);
        dump.as_array()
            .expect("bpftool dump")
            .iter()
            .map(|e| &e["formatted"])
            .filter(|e| e["value"]["flags"].as_u64().unwrap_or(0) & 1 == 1)
            .map(|e| {
                let v = &e["value"];
                let mac = <[u8; 6]>::try_from(dumped_bytes(&v["mac"])).expect("6 bytes");
                (e["key"].as_u64().expect("id"), dumped_addr(v), mac)
            })
            .collect()
    }

    /// Slots per backend name in VIP `vip`'s live table, read from the pinned maps (the
    /// table the XDP program selects new flows from); a backend with no slot is absent.
    pub fn table_slots(&self, vip: &str) -> std::collections::BTreeMap<String, u32> {
        use aya::maps::{Array, ArrayOfMaps, Map, MapData};
        let status = self.status();
        let v = status["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .find(|v| v["vip"] == vip)
            .unwrap_or_else(|| panic!("no VIP {vip} in {status}"));
        let vip_id = v["id"].as_u64().expect("VIP id") as u32;
        let names: std::collections::BTreeMap<u32, String> = v["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| {
                (
                    b["id"].as_u64().expect("backend id") as u32,
                    b["backend"].as_str().expect("name").to_string(),
                )
            })
            .collect();
        let path = self.pins.path().join(lb_common::maps::RINGS);
        let data = MapData::from_pin(&path).expect("open the pinned xlb_rings");
        let rings: ArrayOfMaps<MapData, Array<MapData, u32>> =
            ArrayOfMaps::try_from(Map::ArrayOfMaps(data)).expect("xlb_rings is an array of maps");
        let table = rings.get(&vip_id, 0).expect("VIP's table");
        let header = lb_common::maps::TABLE_HEADER;
        let size = table
            .get(&lb_common::maps::TABLE_HDR_SIZE, 0)
            .expect("table size");
        let mut slots = std::collections::BTreeMap::new();
        for i in header..header + size {
            let id = lb_common::Slot::unpack(table.get(&i, 0).expect("table slot")).owner;
            let name = names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("id {id}"));
            *slots.entry(name).or_default() += 1;
        }
        slots
    }
}

/// A byte array as bpftool's BTF-formatted JSON prints it.
fn dumped_bytes(v: &serde_json::Value) -> Vec<u8> {
    v.as_array()
        .expect("a byte array")
        .iter()
        .map(|b| b.as_u64().expect("a byte") as u8)
        .collect()
}

/// The `addr` of a dumped struct that also has a `family` field.
fn dumped_addr(v: &serde_json::Value) -> IpAddr {
    let addr = dumped_bytes(&v["addr"]);
    if v["family"].as_u64() == Some(u64::from(lb_common::FAMILY_V4)) {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(<[u8; 16]>::try_from(addr).expect("16 bytes"))
    }
}
