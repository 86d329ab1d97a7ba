//! Stepped rollouts: `xlb apply FILE --steps N|auto --interval D` walks from the running
//! weights to the file's through `rollout::steps`, checked in full before the first
//! step; each step is a generation (source `rollout`) followed by a watch of `interval`.
//! A breach, or a step the guardrails refuse on the way (health changed), rolls back to
//! the generation the rollout started from; `xlb rollout abort` does the same. One
//! rollout runs at a time, and other changes wait for it to end (`busy`).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    state::{Shared, lock},
    watcher::{self, Ends},
};
use crate::{
    api::{Guarded, Response},
    config,
    controller::{self, Controller},
    guard::Maglev,
    history::{Source, WatchOutcome, now},
    rollout,
};

/// A rollout, as `xlb rollout status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub target: PathBuf,
    pub user: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub steps: u32,
    /// The step applied last (0: none yet).
    pub step: u32,
    pub interval_ms: u64,
    /// The generation it started from, and returns to on a breach or abort.
    pub from: u64,
    /// The generation of each step applied.
    pub generations: Vec<u64>,
    /// `running`, `completed`, `rolled_back` or `aborted`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The rollout that is running, if any: what other changes wait for.
pub(crate) fn busy(d: &Shared) -> Option<String> {
    lock(&d.rollout).as_ref().and_then(|(s, _)| {
        (s.outcome == "running").then(|| {
            format!(
                "a rollout to {} is in progress (step {} of {}); wait for it, or `xlb rollout \
                 abort`",
                s.target.display(),
                s.step,
                s.steps
            )
        })
    })
}

/// Runs a rollout of `text` (file `file`) for `user`; answers when it has ended.
pub(crate) async fn run(
    d: &Arc<Shared>,
    (text, file, steps, interval_ms): (String, PathBuf, Option<u32>, u64),
    guarded: Guarded,
    user: String,
) -> Response {
    if let Some(busy) = busy(d) {
        return Response::error(busy);
    }
    let file = crate::reload::file_label(&file);
    let settings = d.settings.clone();
    let (f, force) = (file.clone(), guarded.force);
    let planned = d
        .turn()
        .await
        .run(move |c| {
            let mut target =
                config::parse(&text, &f).map_err(|e| Response::error(e.to_string()))?;
            target.daemon = settings;
            let Some(current) = c.current() else {
                return Err(Box::new(Response::error(
                    "no generation is applied yet: apply the file without --steps first",
                )));
            };
            let running = current.config.without_lines();
            let from = current.generation;
            rollout::steps(&running, &target, steps, force, &c.health(), &Maglev)
                .map(|s| (s, from))
                .map_err(|(k, violations)| {
                    Box::new(Response {
                        ok: false,
                        error: format!(
                            "step {k} of the rollout is refused by the guardrails; nothing \
                             was changed (more --steps, or --steps auto, keeps each step \
                             within max-flow-shift)"
                        ),
                        violations,
                        ..Response::default()
                    })
                })
        })
        .await;
    let (plan, from) = match planned {
        Ok(Ok(p)) => p,
        Ok(Err(r)) => return *r,
        Err(e) => return Response::error(e),
    };
    let n = plan.len() as u32;
    if guarded.dry_run {
        let moved: Vec<f64> = plan
            .iter()
            .map(|(_, p)| p.vips.iter().map(|v| v.moved).fold(0.0, f64::max))
            .collect();
        return Response::data(serde_json::json!({
            "steps": n, "moved": moved, "plans": plan.iter().map(|(_, p)| p).collect::<Vec<_>>()
        }));
    }
    let abort = Arc::new(AtomicBool::new(false));
    let mut state = State {
        target: file.clone(),
        user: user.clone(),
        started: now(),
        steps: n,
        step: 0,
        interval_ms,
        from,
        generations: Vec::new(),
        outcome: "running".into(),
        detail: String::new(),
    };
    {
        let mut slot = lock(&d.rollout);
        if slot.as_ref().is_some_and(|(s, _)| s.outcome == "running") {
            return Response::error("another rollout started meanwhile");
        }
        *slot = Some((state.clone(), Arc::clone(&abort)));
    }
    info!(
        user,
        "rollout to {} in {n} steps from generation {from}",
        file.display()
    );
    let window = Duration::from_millis(interval_ms);
    for (k, (config, _)) in plan.into_iter().enumerate() {
        let k = k as u32 + 1;
        if abort.load(Ordering::Relaxed) {
            state.detail = "`xlb rollout abort`".into();
            state.outcome = back(d, from, &user, "the rollout was aborted", "aborted").await;
            break;
        }
        let source = Source::Rollout {
            step: k,
            steps: n,
            target: file.display().to_string(),
        };
        let (u, g) = (user.clone(), guarded.clone());
        let applied = d
            .turn()
            .await
            .run(move |c: &mut Controller| {
                c.apply(controller::Request {
                    config,
                    source,
                    user: u,
                    force: g.force,
                    reason: g.reason,
                    dry_run: false,
                })
            })
            .await;
        let outcome = match applied {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                state.detail = format!("refused: {e}");
                state.outcome = back(d, from, &user, &state.detail, "rolled_back").await;
                break;
            }
            Err(e) => {
                state.detail = e;
                state.outcome = back(d, from, &user, &state.detail, "rolled_back").await;
                break;
            }
        };
        state.step = k;
        if let Some(g) = outcome.generation {
            state.generations.push(g);
        }
        update(d, &state);
        let Some(generation) = outcome.generation else {
            continue;
        };
        let ends = Ends {
            back_to: Some(from),
            abort: Some(Arc::clone(&abort)),
        };
        let verdict =
            watcher::watch(d, generation, watcher::expect(&outcome.plan), window, ends).await;
        match verdict.outcome {
            WatchOutcome::Passed => {}
            WatchOutcome::Breached => {
                state.detail = verdict.detail;
                state.outcome = "rolled_back".into();
                break;
            }
            WatchOutcome::Aborted => {
                state.detail = "`xlb rollout abort`".into();
                state.outcome = back(d, from, &user, "the rollout was aborted", "aborted").await;
                break;
            }
            WatchOutcome::Superseded => {
                state.detail = verdict.detail;
                state.outcome = "aborted".into();
                break;
            }
        }
    }
    if state.outcome == "running" {
        state.outcome = "completed".into();
    }
    let counted = ["completed", "rolled_back"]
        .into_iter()
        .find(|o| state.outcome.starts_with(o))
        .unwrap_or("aborted");
    *lock(&d.rollouts).entry(counted).or_insert(0) += 1;
    update(d, &state);
    let summary = format!(
        "rollout to {}: {} after step {} of {}{}",
        file.display(),
        state.outcome,
        state.step,
        state.steps,
        if state.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", state.detail)
        }
    );
    if state.outcome == "completed" {
        info!(user, "{summary}");
        Response::data(&state)
    } else {
        warn!(user, "{summary}");
        Response {
            ok: false,
            error: summary,
            data: serde_json::to_value(&state).unwrap_or_default(),
            ..Response::default()
        }
    }
}

fn update(d: &Shared, state: &State) {
    if let Some((s, _)) = lock(&d.rollout).as_mut() {
        *s = state.clone();
    }
}

/// Returns to generation `from` (forced: it ran before); gives `outcome`, or says the
/// way back failed.
async fn back(d: &Arc<Shared>, from: u64, user: &str, why: &str, outcome: &str) -> String {
    let (settings, user, why) = (d.settings.clone(), user.to_string(), why.to_string());
    let done = d
        .turn()
        .await
        .run(move |c| {
            let source = Source::Rollback { to: from };
            watcher::return_to(c, settings, from, source, user, format!("rollout: {why}"))
        })
        .await;
    match done {
        Ok(Ok(_)) => outcome.into(),
        Ok(Err(e)) | Err(e) => {
            warn!("rollout: returning to generation {from} FAILED: {e}");
            format!("{outcome} (returning to generation {from} failed: {e})")
        }
    }
}

/// `xlb rollout abort`: flags the running rollout and waits (up to a minute) for it to
/// have returned to where it started.
pub(crate) async fn abort(d: &Arc<Shared>) -> Response {
    let flag = match lock(&d.rollout).as_ref() {
        Some((s, flag)) if s.outcome == "running" => Arc::clone(flag),
        _ => return Response::error("no rollout is in progress"),
    };
    flag.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((s, _)) = lock(&d.rollout).as_ref()
            && s.outcome != "running"
        {
            return Response::data(s);
        }
        if tokio::time::Instant::now() > deadline {
            return Response::error("the rollout has not ended within a minute of the abort");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `xlb rollout status`.
pub(crate) fn status(d: &Shared) -> Response {
    match lock(&d.rollout).as_ref() {
        Some((s, _)) => Response::data(s),
        None => Response::error("no rollout has run since the daemon started"),
    }
}
