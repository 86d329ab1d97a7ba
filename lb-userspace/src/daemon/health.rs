//! Health probes: each round TCP-connects to every backend of every VIP with
//! `[vip.health]`, all at once, and hands the results to the controller, where they feed
//! the `healthy-quorum` guardrail, `xlb status` and `xlb_backend_healthy`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpStream, sync::Semaphore, task::JoinSet};

use super::state::Shared;
use crate::{config, guard::Health};

/// Probes in flight at once. Each holds a socket; this keeps a very large config from
/// taking the file descriptors that the API socket and `/metrics` need.
const MAX_PROBES: usize = 1024;

/// Whether a TCP connection to `addr` completes within `timeout`.
async fn probe(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// One round over `vips`: every probe runs concurrently.
async fn round(vips: &[config::Vip]) -> Health {
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    let mut probes = JoinSet::new();
    for v in vips {
        let Some(h) = &v.health else { continue };
        for b in &v.backends {
            let Ok(ip) = b.address.parse::<IpAddr>() else {
                continue;
            };
            let key = (v.name.clone(), b.name.clone());
            let addr = SocketAddr::new(ip, h.port);
            let timeout = Duration::from_millis(h.timeout_ms);
            let slots = slots.clone();
            probes.spawn(async move {
                let _slot = slots.acquire_owned().await;
                (key, probe(addr, timeout).await)
            });
        }
    }
    let mut health = Health::new();
    while let Some(done) = probes.join_next().await {
        if let Ok((key, up)) = done {
            health.insert(key, up);
        }
    }
    health
}

/// Probes forever, every `interval_ms` (the shortest configured; 1 s while no VIP has
/// checks, so that a new generation's checks start within a second).
pub async fn checker(d: Arc<Shared>) {
    loop {
        // The checked VIPs of the running generation, read during one short turn.
        let vips: Vec<config::Vip> = d
            .turn()
            .await
            .controller()
            .current()
            .map(|r| {
                r.config
                    .vips
                    .iter()
                    .filter(|v| v.health.is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let interval = vips
            .iter()
            .filter_map(|v| v.health.as_ref().map(|h| h.interval_ms))
            .min();
        let health = round(&vips).await;
        d.turn().await.controller().set_health(health);
        tokio::time::sleep(Duration::from_millis(interval.unwrap_or(1000).max(100))).await;
    }
}
