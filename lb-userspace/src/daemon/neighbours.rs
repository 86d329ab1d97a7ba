//! The neighbour refresher: every second, reads the neighbour table for the running
//! generation's `mac = "neighbour"` backends, has the kernel re-validate settled entries
//! and solicit failed or missing ones (`crate::neighbour`), and lets the controller
//! commit a MAC that changed or resolved at last as a generation of its own.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use tracing::{info, warn};

use super::state::Shared;
use crate::neighbour::{self, Nud};

/// How often the neighbour table is read.
const REFRESH: Duration = Duration::from_secs(1);

pub(crate) async fn refresher(d: Arc<Shared>, iface: String) {
    loop {
        tokio::time::sleep(REFRESH).await;
        if d.stopping() {
            return;
        }
        let addrs = d.turn().await.controller().neighbour_backends();
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
