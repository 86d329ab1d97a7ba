//! `xlb status` and `xlb stats`: VIPs, backends, weights, health, table against observed
//! shares, counters and rates.

use std::{path::Path, time::Duration};

use xlb::{api::Request, controller::VipStatsView};

use super::{
    call, ok,
    output::{pct, print_json},
};

pub(crate) fn status(socket: &Path, json: bool) -> Result<u8, String> {
    let r = ok(call(socket, &Request::Status)?)?;
    if json {
        print_json(&r.data)?;
    } else {
        print_status(&r.data)?;
    }
    Ok(0)
}

pub(crate) fn stats(
    socket: &Path,
    json: bool,
    watch: bool,
    interval: f64,
    count: u64,
) -> Result<u8, String> {
    let mut n = 0u64;
    loop {
        let r = ok(call(socket, &Request::Stats)?)?;
        if json {
            say!(
                "{}",
                serde_json::to_string(&r.data).map_err(|e| e.to_string())?
            );
        } else {
            print_stats(&r.data)?;
        }
        n += 1;
        if !watch || (count > 0 && n >= count) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs_f64(interval.max(0.1)));
    }
}

fn vips(data: &serde_json::Value) -> Result<Vec<VipStatsView>, String> {
    serde_json::from_value(data["vips"].clone()).map_err(|e| e.to_string())
}

/// `field` of the daemon's last one-second rates for `backend` of `vip` (0 if none yet).
fn rate(data: &serde_json::Value, vip: &str, backend: &str, field: &str) -> f64 {
    data["rates"]
        .as_array()
        .and_then(|rates| {
            rates
                .iter()
                .find(|r| r["vip"] == vip && r["backend"] == backend)
        })
        .and_then(|r| r["rates"][field].as_f64())
        .unwrap_or(0.0)
}

/// Each backend's observed share of new flows over the daemon's observation window
/// (the running watch's, else the last 60 s), and a note when there were too few flows
/// for a share to mean anything.
fn observed_shares(data: &serde_json::Value, v: &VipStatsView) -> (Vec<String>, Option<String>) {
    let o = &data["observed"][&v.vip];
    let flows = o["flows"].as_u64().unwrap_or(0);
    let shares: Vec<String> = v
        .backends
        .iter()
        .map(|b| o["shares"][&b.backend][0].as_f64().map_or("-".into(), pct))
        .collect();
    let note = o["shares"]
        .as_object()
        .is_none_or(|s| s.is_empty())
        .then(|| {
            format!(
                "observed share: {flows} new flows in the window, too few to mean anything \
                 ({} needed)",
                data["min_flows"]
            )
        });
    (shares, note)
}

fn print_status(data: &serde_json::Value) -> Result<(), String> {
    say!(
        "generation {}  interface {}  xdp {}",
        data["generation"],
        data["interface"].as_str().unwrap_or("-"),
        data["xdp_mode"].as_str().unwrap_or("-")
    );
    if let Some(w) = data["watch"].as_object() {
        let secs = |k: &str| w[k].as_u64().unwrap_or(0) / 1000;
        say!(
            "watching generation {}: {} s of {} s, rolled back by itself on a breach",
            w["generation"],
            secs("elapsed_ms"),
            secs("window_ms")
        );
    }
    say!(
        "hash_seed {}  table_size {} (the same on every host of an ECMP group)",
        data["hash_seed"],
        data["table_size"]
    );
    if let Ok(Some(view)) =
        serde_json::from_value::<Option<xlb::announce::View>>(data["announce"].clone())
    {
        super::host::print_view(&view);
    }
    match data["trace_clients"].as_u64() {
        Some(0) | None => {}
        Some(n) => say!("xlb trace: {n} attached (the program reports decisions)"),
    }
    for v in vips(data)? {
        let (observed, note) = observed_shares(data, &v);
        say!(
            "\nvip {} (id {}, table generation {})",
            v.label,
            v.id,
            v.generation
        );
        if let Some(p) = &v.panic {
            say!("  {}", p.message());
        }
        if let Some(note) = note {
            say!("  {note}");
        }
        say!(
            "  {:<20} {:<16} {:<30} {:>8} {:>9} {:<16} {:>11} {:>14}",
            "BACKEND",
            "ADDRESS",
            "MAC",
            "WEIGHT",
            "EFFECTIVE",
            "HEALTH",
            "TABLE SHARE",
            "OBSERVED SHARE"
        );
        for (b, observed) in v.backends.iter().zip(&observed) {
            let health = match (b.healthy, &b.held) {
                (Some(true), Some(h)) if h.starts_with("slow start") => h.clone(),
                (Some(true), _) => "up".into(),
                // Down and still in the table: the VIP is in panic.
                (Some(false), None) if v.panic.is_some() && b.weight > 0 => "DOWN (kept)".into(),
                (Some(false), _) => "DOWN".into(),
                (None, _) => "-".into(),
            };
            let mac = match &b.mac {
                Some(mac) => format!("{mac} ({})", b.mac_source),
                // ipip: the route's next hop, no MAC of its own.
                None if b.mac_source == "route" => "route (ipip)".into(),
                None => "UNRESOLVED: no slot".into(),
            };
            say!(
                "  {:<20} {:<16} {:<30} {:>8} {:>9} {:<16} {:>11} {:>14}",
                b.backend,
                b.address,
                mac,
                b.weight,
                b.effective_weight,
                health,
                pct(b.table_share),
                observed
            );
            if let (Some(false), Some(probe)) = (b.healthy, &b.last_probe) {
                say!("    last probe: {probe}");
            }
        }
    }
    Ok(())
}

fn print_stats(data: &serde_json::Value) -> Result<(), String> {
    for v in vips(data)? {
        let (observed, note) = observed_shares(data, &v);
        say!(
            "vip {}  packets {}  bytes {}  new flows {}  drops {}",
            v.label,
            v.packets,
            v.bytes,
            v.new_flows,
            v.drops
        );
        if let Some(note) = note {
            say!("  {note}");
        }
        say!(
            "  {:<20} {:>12} {:>14} {:>10} {:>10} {:>10} {:>8} {:>8}",
            "BACKEND",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "PKT/S",
            "FLOWS/S",
            "TABLE",
            "OBSERVED"
        );
        for (b, observed) in v.backends.iter().zip(&observed) {
            say!(
                "  {:<20} {:>12} {:>14} {:>10} {:>10.0} {:>10.1} {:>8} {:>8}",
                b.backend,
                b.packets,
                b.bytes,
                b.new_flows,
                rate(data, &v.vip, &b.backend, "packets_per_s"),
                rate(data, &v.vip, &b.backend, "new_flows_per_s"),
                pct(b.table_share),
                observed
            );
        }
        if v.packets > 0 {
            say!(
                "  stateless path {} of {} forwarded packets",
                pct(1.0 - v.stateful as f64 / v.packets as f64),
                v.packets
            );
        }
    }
    let f = &data["flows"];
    if f.is_object() {
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        let swept = f["swept_s_ago"]
            .as_f64()
            .map_or("no sweep yet".to_string(), |s| {
                format!("at the last sweep, {s:.0} s ago")
            });
        say!(
            "flow table  {} entries of {}, changed slots {} ({swept}; the daemon sweeps \
             every {} s)  inserts {}  refused: full {}, flood guard {}",
            n("entries"),
            n("capacity"),
            n("changed_slots"),
            n("sweep_every_s"),
            n("inserts"),
            n("refused_full"),
            n("refused_rate")
        );
    }
    Ok(())
}
