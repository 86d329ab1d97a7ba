//! Health probes: each round TCP-connects to every backend of every VIP with
//! `[vip.health]`, all at once, and hands the results to the controller, where they feed
//! the `healthy-quorum` guardrail, `xlb status` and `xlb_backend_healthy`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpStream, sync::Semaphore, task::JoinSet};

use super::state::Shared;
use crate::{config, guard::Health, health::Probes};

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
/// checks, so that a new generation's checks start within a second). Each round goes
/// through rise/fall (`health::Tracker`); when that changes which backends are held out,
/// the controller commits a `health` generation.
pub async fn checker(d: Arc<Shared>) {
    let started = tokio::time::Instant::now();
    loop {
        // The checks of the running generation, read during one short turn.
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
        let checks: BTreeMap<String, config::HealthCheck> = vips
            .iter()
            .filter_map(|v| Some((v.name.clone(), v.health.clone()?)))
            .collect();
        let interval = checks.values().map(|h| h.interval_ms).min();
        let health = round(&vips).await;
        let probes: Probes = health
            .into_iter()
            .map(|(k, up)| {
                (
                    k,
                    if up {
                        Ok(Duration::ZERO)
                    } else {
                        Err("connect failed".into())
                    },
                )
            })
            .collect();
        let now = started.elapsed();
        // A health generation writes the maps: on the blocking pool, like any apply.
        let done = d.turn().await.run(move |c| {
            let was_panic = c.panics().clone();
            let transitions = c.observe(&checks, &probes, now);
            for t in &transitions {
                if t.up {
                    tracing::info!("health: {} is up ({})", t.key(), t.why);
                } else {
                    tracing::warn!("health: {} is down ({})", t.key(), t.why);
                }
            }
            let committed = c.refresh_health(&transitions);
            for (vip, p) in c.panics() {
                if was_panic.get(vip) != Some(p) {
                    tracing::warn!("health: vip {vip}: {}", p.message());
                }
            }
            for vip in was_panic.keys().filter(|v| !c.panics().contains_key(*v)) {
                tracing::info!("health: vip {vip}: panic over");
            }
            committed
        });
        match done.await {
            Ok(Ok(Some(h))) => tracing::warn!(
                "generation {} (health): {}",
                h.generation,
                h.changes.join("; ")
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("health: the generation could not be applied: {e}"),
            Err(e) => tracing::error!("health: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(interval.unwrap_or(1000).max(100))).await;
    }
}
