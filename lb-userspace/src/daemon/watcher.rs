//! Guarded commits: after a watched change took effect, the daemon reads the counters and
//! health twice a second for the window (`watch::breach` decides) and, on a breach, rolls
//! back to the generation before the change by itself (history source `auto-rollback`,
//! forced with the breach as its reason: that generation ran before, so the guardrails
//! do not hold the way back). A window that runs out without a breach makes the
//! generation known-good (`xlb rollback --last-good`). Another change before the end
//! supersedes the watch.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tracing::{info, warn};

use super::state::{Shared, lock};
use crate::{
    config,
    controller::{self, Controller, VipStatsView},
    guard::{Change, Plan},
    history::{Source, WatchOutcome, WatchVerdict, now},
    watch::{self, Expect},
};

/// How often a watch looks.
const LOOK: Duration = Duration::from_millis(500);

/// What `plan` changed that a watch checks: the VIPs it touched and the backends whose
/// table share grew.
pub(crate) fn expect(plan: &Plan) -> Expect {
    let touched = plan.vips.iter().filter(|v| v.change != Change::Unchanged);
    Expect {
        vips: touched.clone().map(|v| v.vip.clone()).collect(),
        gained: touched
            .flat_map(|v| {
                v.rows
                    .iter()
                    .filter(|r| r.share_after > r.share_before + 1e-9)
                    .map(|r| (v.vip.clone(), r.backend.clone()))
            })
            .collect(),
    }
}

/// How a watch ends besides its window: where a breach rolls back to (default: the
/// generation before the watched one) and a flag that aborts it. A rollout's watch has
/// both; its breach counts as a rolled-back rollout, not in `xlb_auto_rollbacks_total`.
#[derive(Default)]
pub(crate) struct Ends {
    pub back_to: Option<u64>,
    pub abort: Option<Arc<AtomicBool>>,
}

/// Watches `generation` for `window`; the verdict is recorded in the history.
pub(crate) async fn watch(
    d: &Arc<Shared>,
    generation: u64,
    expect: Expect,
    window: Duration,
    ends: Ends,
) -> WatchVerdict {
    let read = |c: &mut Controller| c.stats().unwrap_or_default();
    let before: Vec<VipStatsView> = d.turn().await.run(read).await.unwrap_or_default();
    let start = tokio::time::Instant::now();
    let verdict = |outcome, detail: String, rollback| WatchVerdict {
        generation,
        outcome,
        detail,
        window_ms: window.as_millis() as u64,
        time: now(),
        rollback,
    };
    *lock(&d.watching) = Some((generation, start, window));
    let result = loop {
        tokio::time::sleep(LOOK.min(window)).await;
        if ends
            .abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Relaxed))
        {
            break verdict(
                WatchOutcome::Aborted,
                "the rollout was aborted".into(),
                None,
            );
        }
        let expect = expect.clone();
        let before = before.clone();
        // Only a newer generation can supersede the watched one: the history is read only
        // once there is one.
        let moved = d
            .running
            .borrow()
            .as_ref()
            .is_some_and(|r| r.generation > generation);
        let look = d
            .turn()
            .await
            .run(move |c| {
                // The newest change that is not the daemon's own follow-up.
                let listed = if moved {
                    c.history().generations().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let newer = listed
                    .into_iter()
                    .filter(|&g| g > generation)
                    .find(|&g| c.history().get(g).is_ok_and(|r| !r.source.is_followup()));
                if let Some(n) = newer {
                    return Err(format!("superseded by generation {n}"));
                }
                Ok(watch::breach(&expect, &before, &read(c), &c.health()))
            })
            .await;
        match look {
            Ok(Err(superseded)) => break verdict(WatchOutcome::Superseded, superseded, None),
            Ok(Ok(Some(breach))) => {
                break roll_back(d, generation, ends.back_to, breach, &verdict).await;
            }
            Ok(Ok(None)) | Err(_) => {}
        }
        if start.elapsed() >= window {
            break verdict(WatchOutcome::Passed, String::new(), None);
        }
    };
    *lock(&d.watching) = None;
    let record = result.clone();
    #[expect(
        clippy::let_underscore_must_use,
        reason = "the closure logs a failed record; an error here is its panic, already printed"
    )]
    let _ = d
        .turn()
        .await
        .run(move |c| {
            if let Err(e) = c.history().record_watch(&record) {
                warn!("watch of generation {generation}: recording the verdict: {e}");
            }
        })
        .await;
    match result.outcome {
        WatchOutcome::Passed => info!("watch of generation {generation}: passed ({window:?})"),
        WatchOutcome::Superseded | WatchOutcome::Aborted => {
            info!("watch of generation {generation}: {}", result.detail)
        }
        WatchOutcome::Breached => warn!("watch of generation {generation}: {}", result.detail),
    }
    result
}

/// Re-applies generation `to` as `source`, forced with `reason`: it ran before, so the
/// guardrails (which may have been overridden then) do not hold the way back. Returns the
/// generation created (none when nothing changed).
pub(crate) fn return_to(
    c: &mut Controller,
    settings: config::Daemon,
    to: u64,
    source: Source,
    user: String,
    reason: String,
) -> Result<Option<u64>, String> {
    let config = c.config_of(to, &settings).map_err(|e| e.to_string())?;
    c.apply(controller::Request {
        config,
        source,
        user,
        force: true,
        reason: Some(reason),
        dry_run: false,
    })
    .map(|o| o.generation)
    .map_err(|e| e.to_string())
}

/// Rolls `generation` back to `back_to` (default: the one before it) after `breach`.
async fn roll_back(
    d: &Arc<Shared>,
    generation: u64,
    back_to: Option<u64>,
    breach: String,
    verdict: &impl Fn(WatchOutcome, String, Option<u64>) -> WatchVerdict,
) -> WatchVerdict {
    let settings = d.settings.clone();
    let why = breach.clone();
    let done = d
        .turn()
        .await
        .run(move |c| {
            let to = match back_to {
                Some(to) => to,
                None => c
                    .history()
                    .generations()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|&g| g < generation)
                    .max()
                    .ok_or("there is no generation before it")?,
            };
            let source = Source::AutoRollback {
                to,
                breach: why.clone(),
            };
            let reason = format!("watch of generation {generation} breached: {why}");
            return_to(c, settings, to, source, "xlb".into(), reason).map(|g| (to, g))
        })
        .await;
    match done {
        Ok(Ok((to, created))) => {
            if back_to.is_none() {
                d.auto_rollbacks.fetch_add(1, Ordering::Relaxed);
            }
            let created =
                created.map_or("nothing to change".into(), |g| format!("as generation {g}"));
            warn!("auto-rollback of generation {generation} to {to} ({created}): {breach}");
            verdict(
                WatchOutcome::Breached,
                format!("{breach}; rolled back to generation {to} ({created})"),
                Some(to),
            )
        }
        Ok(Err(e)) | Err(e) => verdict(
            WatchOutcome::Breached,
            format!("{breach}; the rollback FAILED: {e}"),
            None,
        ),
    }
}
