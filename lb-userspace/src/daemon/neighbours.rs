//! The neighbour refresher: every second, reads the neighbour table for the running
//! generation's `mac = "neighbour"` backends, has the kernel re-validate settled entries
//! and solicit failed or missing ones (`crate::neighbour`), and lets the controller
//! commit a MAC that changed or resolved at last as a generation of its own.
//!
//! `ipip` backends get the same care for their route's next hop (a router, or the
//! backend itself on-link): the program's FIB lookup finds the next hop's MAC only in
//! a valid neighbour entry (else `drop_fib_no_neighbour`), and the load balancer's own
//! stack sends nothing that would keep one. The first round runs at start. What keeps
//! `ipip` packets from being sent (a backend without a route, forwarding off on the
//! interface) is logged once when it starts and once when it ends.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use tracing::{info, warn};

use super::state::Shared;
use crate::neighbour::{self, Nud};

/// How often the neighbour table is read.
const REFRESH: Duration = Duration::from_secs(1);

pub(crate) async fn refresher(d: Arc<Shared>, iface: String) {
    let mut first = true;
    let mut problems: BTreeSet<String> = BTreeSet::new();
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(REFRESH).await;
        }
        if d.stopping() {
            return;
        }
        let (addrs, routed) = {
            let mut turn = d.turn().await;
            let c = turn.controller();
            (c.neighbour_backends(), c.routed_backends())
        };
        if !routed.is_empty() {
            let iface = iface.clone();
            let kept = tokio::task::spawn_blocking(move || keep_next_hops(&iface, &routed))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            let now = match kept {
                Ok(now) => now,
                Err(e) => BTreeSet::from([format!("next hops of ipip backends: {e}")]),
            };
            for p in now.difference(&problems) {
                warn!(user = "xlb", "ipip: {p}");
            }
            for p in problems.difference(&now) {
                info!(user = "xlb", "ipip: resolved: {p}");
            }
            problems = now;
        } else {
            problems.clear();
        }
        if addrs.is_empty() {
            continue;
        }
        let iface = iface.clone();
        // `ip` runs as a child process: off the runtime's worker threads.
        let seen = tokio::task::spawn_blocking(move || probe(&iface, &addrs))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let seen = match seen {
            Ok(seen) => seen,
            Err(e) => {
                warn!("neighbour table: {e}");
                continue;
            }
        };
        let done = d.turn().await.run(move |c| c.refresh_macs(&seen)).await;
        match done {
            Ok(Ok(Some(r))) => info!(
                user = "xlb",
                "neighbour: {} applied as generation {}",
                r.changes.join(", "),
                r.generation
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(user = "xlb", "neighbour: applying a MAC change failed: {e}"),
            Err(e) => warn!("neighbour: {e}"),
        }
    }
}

/// Keeps the next hop of every backend in `routed` resolved: settled entries on `iface`
/// are re-validated, and a missing or failed one is solicited by sending to a backend
/// behind it (the kernel resolves the next hop to send it). Next hops on other
/// interfaces are left to the kernel's own traffic there. Returns what keeps packets
/// to these backends from being sent: a backend without a route, forwarding off.
fn keep_next_hops(iface: &str, routed: &[IpAddr]) -> Result<BTreeSet<String>, String> {
    let mut problems = BTreeSet::new();
    for (v4, family, key) in [(true, "ipv4", "net.ipv4"), (false, "ipv6", "net.ipv6")] {
        if !routed.iter().any(|a| a.is_ipv4() == v4) {
            continue;
        }
        let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            problems.insert(format!(
                "forwarding is off on {iface}, so the FIB lookup refuses every {family} ipip \
                 packet (drop_fib_forwarding_off): sysctl -w {key}.conf.{iface}.forwarding=1"
            ));
        }
    }
    let entries = neighbour::entries(iface)?;
    let mut hops: BTreeMap<IpAddr, IpAddr> = BTreeMap::new();
    for &b in routed {
        match neighbour::next_hop(b) {
            Ok((hop, dev)) if dev == iface => {
                hops.entry(hop).or_insert(b);
            }
            Ok(_) => {}
            Err(e) => {
                problems.insert(format!("backend {b} has no route (drop_fib_no_route): {e}"));
            }
        }
    }
    let state_of = |a: &IpAddr| entries.iter().find(|(x, _)| x == a).map(|(_, e)| e.state);
    let settled: Vec<IpAddr> = hops
        .keys()
        .copied()
        .filter(|h| state_of(h) == Some(Nud::Settled))
        .collect();
    neighbour::revalidate(iface, &settled)?;
    for (hop, backend) in &hops {
        match state_of(hop) {
            None => neighbour::solicit(*backend),
            Some(Nud::Failed) => {
                neighbour::solicit(*backend);
                problems.insert(format!(
                    "next hop {hop} of backend {backend} does not answer ARP / ND \
                     (drop_fib_no_neighbour)"
                ));
            }
            _ => {}
        }
    }
    Ok(problems)
}

/// The valid entries for `addrs` now, after asking for the next round's re-validation.
fn probe(iface: &str, addrs: &[IpAddr]) -> Result<BTreeMap<IpAddr, [u8; 6]>, String> {
    let entries = neighbour::entries(iface)?;
    let state_of = |a: &IpAddr| entries.iter().find(|(x, _)| x == a).map(|(_, e)| e.state);
    let settled: Vec<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|a| state_of(a) == Some(Nud::Settled))
        .collect();
    neighbour::revalidate(iface, &settled)?;
    for a in addrs
        .iter()
        .filter(|a| matches!(state_of(a), None | Some(Nud::Failed)))
    {
        neighbour::solicit(*a);
    }
    Ok(entries
        .iter()
        .filter(|(a, _)| addrs.contains(a))
        .filter_map(|(a, e)| Some((*a, e.mac?)))
        .collect())
}
