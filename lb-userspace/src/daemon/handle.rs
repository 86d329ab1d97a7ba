//! One API request: wait for the controller's turn, drop a change whose client went away
//! while it waited, run the request on the controller, and log every change or attempt
//! with who asked, what, the outcome, and whether it was forced and why.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tracing::{debug, info, warn};

use super::{
    state::{Shared, Stop, lock},
    sys,
};
use crate::{
    api::{Guarded, Request, Response},
    config,
    controller::{self, ApplyError, Controller},
    dataplane::loader,
    history::Source,
};

/// What `req` asks, for the log: its kind and arguments.
fn describe(req: &Request) -> String {
    let dry = |g: &Guarded| if g.dry_run { " (dry run)" } else { "" };
    match req {
        Request::Status => "status".into(),
        Request::Stats => "stats".into(),
        Request::History { all } => if *all { "history --all" } else { "history" }.into(),
        Request::Export => "export".into(),
        Request::Apply { file, guarded, .. } => {
            format!(
                "apply {}{}",
                crate::reload::file_label(file).display(),
                dry(guarded)
            )
        }
        Request::WeightSet {
            vip,
            backend,
            weight,
            guarded,
        } => format!(
            "weight set {} {} {weight}{}",
            printable(vip),
            printable(backend),
            dry(guarded)
        ),
        Request::Drain {
            vip,
            backend,
            guarded,
        } => format!(
            "drain {} {}{}",
            printable(vip),
            printable(backend),
            dry(guarded)
        ),
        Request::Rollback {
            generation,
            last_good,
            guarded,
        } => match (generation, last_good) {
            (Some(g), _) => format!("rollback to generation {g}{}", dry(guarded)),
            (None, true) => format!("rollback to the last good generation{}", dry(guarded)),
            (None, false) => format!("rollback to the previous generation{}", dry(guarded)),
        },
        Request::Explain { vip, client } => format!("explain {vip} {client}"),
        Request::Flows { vip, backend, .. } => format!(
            "flows{}{}",
            vip.as_deref()
                .map(|v| format!(" {}", printable(v)))
                .unwrap_or_default(),
            backend
                .as_deref()
                .map(|b| format!(" --backend {}", printable(b)))
                .unwrap_or_default()
        ),
        Request::Teardown => "teardown".into(),
        Request::Rollout {
            file,
            steps,
            interval_ms,
            guarded,
            ..
        } => format!(
            "rollout {} in {} steps every {interval_ms} ms{}",
            crate::reload::file_label(file).display(),
            steps.map_or("auto".into(), |n| n.to_string()),
            dry(guarded)
        ),
        Request::RolloutStatus => "rollout status".into(),
        Request::RolloutAbort => "rollout abort".into(),
        Request::Trace { .. } => "trace".into(),
        Request::HostDrain { timeout_ms } => format!("host drain (timeout {timeout_ms} ms)"),
        Request::HostUndrain => "host undrain".into(),
    }
}

/// A client's string, fit for one log line: control characters shown as `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(128)
        .collect()
}

fn guarded(req: &Request) -> Guarded {
    match req {
        Request::Apply { guarded, .. }
        | Request::WeightSet { guarded, .. }
        | Request::Drain { guarded, .. }
        | Request::Rollback { guarded, .. }
        | Request::Rollout { guarded, .. } => guarded.clone(),
        _ => Guarded::default(),
    }
}

/// The outcome of a change, for the log.
pub(crate) fn outcome(r: &Response) -> String {
    if r.ok {
        return match r.generation {
            Some(g) => format!("applied as generation {g}"),
            None => match serde_json::from_value::<loader::Teardown>(r.data.clone()) {
                Ok(report) => report.to_string().replace('\n', "; "),
                Err(_) => "nothing to change".into(),
            },
        };
    }
    if r.violations.is_empty() {
        return format!("failed: {}", r.error);
    }
    format!("rejected by {}", rule_ids(&r.violations))
}

/// The distinct rule ids of `violations`, sorted: `max-backend-share, min-active-backends`.
pub(crate) fn rule_ids(violations: &[crate::guard::Violation]) -> String {
    let mut rules: Vec<&str> = violations.iter().map(|v| v.rule.id()).collect();
    rules.sort_unstable();
    rules.dedup();
    rules.join(", ")
}

/// Answers `req` from `user`, whose connection is `peer` (a raw fd, checked for hangup).
pub(crate) async fn handle(d: &Arc<Shared>, req: Request, user: String, peer: i32) -> Response {
    let what = describe(&req);
    let changes = req.changes_state();
    let g = guarded(&req);
    let reason = g.reason.as_deref().unwrap_or("-");
    let turn = d.turn().await;
    if changes && d.stopping() {
        info!(
            user,
            force = g.force,
            reason,
            "{what}: cancelled: the daemon is stopping"
        );
        return Response::error("the daemon is stopping; nothing was changed");
    }
    if sys::hung_up(peer) {
        if changes {
            info!(
                user,
                force = g.force,
                reason,
                "{what}: cancelled: the client went away while it was queued"
            );
        }
        return Response::error("cancelled: the client went away");
    }
    // Rollouts run for minutes: they take the controller's turn step by step, not here.
    match req {
        Request::RolloutStatus => return super::rollouts::status(d),
        Request::RolloutAbort => {
            drop(turn);
            let r = super::rollouts::abort(d).await;
            info!(user, "{what}: {}", if r.ok { "done" } else { &r.error });
            return r;
        }
        Request::Rollout {
            text,
            file,
            steps,
            interval_ms,
            guarded,
        } => {
            drop(turn);
            let r =
                super::rollouts::run(d, (text, file, steps, interval_ms), guarded, user.clone())
                    .await;
            info!(
                user,
                "{what}: {}",
                if r.ok { "completed" } else { &r.error }
            );
            return r;
        }
        Request::HostDrain { timeout_ms } => {
            drop(turn);
            let r = super::host::drain(d, Duration::from_millis(timeout_ms), user.clone()).await;
            info!(user, "{what}: {}", if r.ok { "done" } else { &r.error });
            return r;
        }
        Request::HostUndrain => {
            drop(turn);
            let r = super::host::undrain(d).await;
            info!(user, "{what}: {}", if r.ok { "done" } else { &r.error });
            return r;
        }
        _ => {}
    }
    let tearing_down = matches!(req, Request::Teardown);
    if tearing_down {
        // Routers move traffic away before XDP goes.
        super::announcer::withdraw_and_wait(d).await;
    }
    if changes
        && !tearing_down
        && let Some(busy) = super::rollouts::busy(d)
    {
        info!(user, "{what}: refused: {busy}");
        return Response::error(busy);
    }
    let req_kind = Watched::of(&req);
    let rates = lock(&d.rates).clone();
    let observed = lock(&d.observed).clone();
    let watch = lock(&d.watching).map(|(generation, start, window)| {
        serde_json::json!({
            "generation": generation,
            "elapsed_ms": start.elapsed().as_millis() as u64,
            "window_ms": window.as_millis() as u64,
        })
    });
    let shared = Arc::clone(d);
    let who = user.clone();
    let response = turn
        .run(move |c| {
            let readings = Readings {
                rates,
                observed,
                watch,
            };
            execute(&shared, c, req, who, readings)
        })
        .await
        .unwrap_or_else(Response::error);
    if tearing_down && !response.ok {
        super::announcer::resume(d);
    }
    let result = outcome(&response);
    match (changes, response.ok) {
        (true, true) => info!(user, force = g.force, reason, "{what}: {result}"),
        (true, false) if response.violations.is_empty() => {
            warn!(user, force = g.force, reason, "{what}: {result}")
        }
        (true, false) => info!(user, force = g.force, reason, "{what}: {result}"),
        (false, _) => debug!(
            user,
            "{what}: {}",
            if response.ok { "ok" } else { &response.error }
        ),
    }
    // The watch (if any) logs its own verdict.
    watch_after(d, &req_kind, &g, response).await
}

/// Whether a request's change is watched (operator changes; not rollbacks, which return
/// to a generation that ran before).
#[derive(PartialEq)]
enum Watched {
    Yes,
    No,
}

impl Watched {
    fn of(req: &Request) -> Watched {
        match req {
            Request::Apply { .. } | Request::WeightSet { .. } | Request::Drain { .. } => {
                Watched::Yes
            }
            _ => Watched::No,
        }
    }
}

/// Watches the change `response` reports, for `--watch` or the running config's
/// `[rollout] watch`; a breach (rolled back) turns the response into a failure.
async fn watch_after(
    d: &Arc<Shared>,
    kind: &Watched,
    g: &Guarded,
    mut response: Response,
) -> Response {
    let (Watched::Yes, true, Some(generation), Some(plan)) =
        (kind, response.ok, response.generation, &response.plan)
    else {
        return response;
    };
    let configured = d
        .turn()
        .await
        .controller()
        .current()
        .and_then(|r| r.config.rollout.watch);
    let Some(window) = g.watch_ms.map(Duration::from_millis).or(configured) else {
        return response;
    };
    let expect = super::watcher::expect(plan);
    let verdict = super::watcher::watch(d, generation, expect, window, Default::default()).await;
    if verdict.outcome == crate::history::WatchOutcome::Breached {
        response.ok = false;
        response.error = format!(
            "generation {generation} was applied, then its watch breached: {}",
            verdict.detail
        );
    }
    response.watch = Some(verdict);
    response
}

/// Logs each backend of `plan` that has no MAC (accepted or not), and what that breaks
/// when it could not be refused (a first generation).
pub(crate) fn warn_unresolved(plan: &crate::guard::Plan) {
    for v in &plan.vips {
        for d in v.details.iter().filter(|d| d.contains("UNRESOLVED")) {
            warn!("vip {}: {d}", v.vip);
        }
    }
    for v in &plan.warnings {
        warn!("{}", v.one_line());
    }
}

fn apply_response(result: Result<controller::Outcome, ApplyError>, dry_run: bool) -> Response {
    match (&result, dry_run) {
        (Ok(o), false) => warn_unresolved(&o.plan),
        (Err(ApplyError::Rejected(_, plan)), false) => warn_unresolved(plan),
        _ => {}
    }
    match result {
        Ok(o) => Response {
            ok: true,
            generation: o.generation,
            plan: Some(o.plan),
            ..Response::default()
        },
        Err(ApplyError::Rejected(violations, plan)) => Response {
            ok: false,
            error: format!(
                "rejected by {} guardrail violation(s); nothing was changed. Fix the config, \
                 or, for policy rules, use --force --reason",
                violations.len()
            ),
            violations,
            plan: Some(*plan),
            ..Response::default()
        },
        Err(e) => Response::error(e.to_string()),
    }
}

/// Applies `config` through the controller on behalf of `user`.
fn apply_as(
    c: &mut Controller,
    config: config::Config,
    source: Source,
    user: String,
    g: Guarded,
) -> Response {
    let dry_run = g.dry_run;
    apply_response(
        c.apply(controller::Request {
            config,
            source,
            user,
            force: g.force,
            reason: g.reason,
            dry_run,
        }),
        dry_run,
    )
}

/// `xlb weight set` and `xlb drain`. `command`, the history's command line, is made by
/// the daemon from the request's fields, and is recorded only once both names are found
/// in the running config (so it holds nothing but valid names).
fn weight_set(
    c: &mut Controller,
    (vip, backend, weight): (&str, &str, i64),
    command: String,
    user: String,
    guarded: Guarded,
) -> Response {
    let Some(current) = c.current() else {
        return Response::error("no generation is applied yet; use `xlb apply FILE`");
    };
    // Lines of the file the running config came from do not locate this change.
    let mut config = current.config.without_lines();
    let Some(v) = config.vips.iter_mut().find(|v| v.name == vip) else {
        return Response::error(format!("no VIP named {vip:?}; `xlb status` lists them"));
    };
    let Some(b) = v.backends.iter_mut().find(|b| b.name == backend) else {
        return Response::error(format!(
            "VIP {vip} has no backend named {backend:?}; `xlb status` lists them"
        ));
    };
    b.weight = weight;
    apply_as(c, config, Source::Cli { command }, user, guarded)
}

/// The generation a rollback returns to: the one asked for; the newest that passed its
/// watch (`last_good`); or the one before the last change (the daemon's own health and
/// neighbour generations are not changes to undo).
fn rollback_target(
    c: &Controller,
    generation: Option<u64>,
    last_good: bool,
) -> Result<u64, String> {
    if let Some(g) = generation {
        return Ok(g);
    }
    if last_good {
        return c
            .history()
            .last_good()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                "no generation has passed a watch window yet (apply with --watch, or set \
             [rollout] watch); name one: xlb rollback GENERATION"
                    .to_string()
            });
    }
    let gens = c.history().generations().map_err(|e| e.to_string())?;
    // The newest change that is the operator's: undo it.
    let last_change = gens
        .iter()
        .rev()
        .find(|&&g| c.history().get(g).is_ok_and(|r| !r.source.is_followup()));
    last_change
        .and_then(|&last| gens.iter().rev().find(|&&g| g < last).copied())
        .ok_or_else(|| "there is no previous generation to roll back to".to_string())
}

/// Applied generations, and with `all` the audited attempts too, oldest first.
fn history(c: &Controller, all: bool) -> Response {
    let records = match c.history().all() {
        Ok(r) => r,
        Err(e) => return Response::error(e.to_string()),
    };
    if !all {
        return Response::data(records);
    }
    match c.history().attempts() {
        Ok(attempts) => Response::data(serde_json::json!({
            "records": records, "attempts": attempts})),
        Err(e) => Response::error(e.to_string()),
    }
}

/// What the daemon's own tasks measured, for `status` and `stats`.
struct Readings {
    rates: std::collections::BTreeMap<(String, String), super::Rates>,
    observed: std::collections::BTreeMap<String, crate::watch::Observed>,
    /// The watch in progress.
    watch: Option<serde_json::Value>,
}

/// `req` on the controller; runs on the blocking pool during the controller's turn.
fn execute(
    d: &Shared,
    c: &mut Controller,
    req: Request,
    user: String,
    readings: Readings,
) -> Response {
    let Readings {
        rates,
        observed,
        watch,
    } = readings;
    let daemon = d.settings.clone();
    match req {
        Request::Status | Request::Stats => match c.stats() {
            Ok(stats) => Response::data(serde_json::json!({
                "generation": c.current().map(|r| r.generation),
                "interface": daemon.interface,
                "xdp_mode": daemon.xdp_mode,
                "vips": stats,
                "rates": rates.iter().map(|((v, b), r)| serde_json::json!({
                    "vip": v, "backend": b, "rates": r})).collect::<Vec<_>>(),
                "observed": observed,
                "min_flows": crate::watch::MIN_FLOWS,
                "watch": watch,
                "trace_clients": d.tracer.clients(),
                "hash_seed": daemon.hash_seed,
                "table_size": daemon.table_size,
                "announce": d.announcing.as_ref().map(|a| a.view()),
                "flows": super::flows::read_table(c).map(|t| super::flows::FlowsView::new(t, d)),
            })),
            Err(e) => Response::error(e.to_string()),
        },
        Request::History { all } => history(c, all),
        Request::Export => match c.current() {
            Some(r) => match config::to_toml(&r.config) {
                Ok(text) => Response::data(serde_json::json!({
                    "generation": r.generation, "config": text})),
                Err(e) => Response::error(format!("encoding the config: {e}")),
            },
            None => Response::error("no generation is applied yet"),
        },
        Request::Apply {
            text,
            file,
            guarded,
        } => {
            // The daemon reads the text itself: what it applies and records is what it
            // parsed; the client's file name only labels it.
            let file = crate::reload::file_label(&file);
            let mut config = match config::parse(&text, &file) {
                Ok(c) => c,
                Err(e) => return Response::error(e.to_string()),
            };
            // Daemon settings take effect at `xlb run`; an apply changes VIPs and policy.
            // Only settings the file states: a file without a [daemon] table asks for
            // no restart.
            let restart: Vec<String> = daemon
                .differences(&config.daemon)
                .into_iter()
                .filter(|d| {
                    d.split_once(':')
                        .is_some_and(|(key, _)| config.line_of(key).is_some())
                })
                .collect();
            config.daemon = daemon;
            let mut r = apply_as(c, config, Source::File { file }, user, guarded);
            if let Some(plan) = &mut r.plan {
                plan.restart = restart;
            }
            r
        }
        Request::WeightSet {
            vip,
            backend,
            weight,
            guarded,
        } => {
            let command = format!("weight set {vip} {backend} {weight}");
            weight_set(c, (&vip, &backend, weight), command, user, guarded)
        }
        Request::Drain {
            vip,
            backend,
            guarded,
        } => {
            let command = format!("drain {vip} {backend}");
            weight_set(c, (&vip, &backend, 0), command, user, guarded)
        }
        Request::Rollback {
            generation,
            last_good,
            guarded,
        } => {
            let target = match rollback_target(c, generation, last_good) {
                Ok(t) => t,
                Err(e) => return Response::error(e),
            };
            match c.config_of(target, &daemon) {
                Ok(config) => apply_as(c, config, Source::Rollback { to: target }, user, guarded),
                Err(e) => Response::error(e.to_string()),
            }
        }
        Request::Explain { vip, client } => {
            let Ok(client) = client.parse::<SocketAddr>() else {
                return Response::error(format!(
                    "{client:?} is not CLIENT_IP:PORT (for IPv6: [2001:db8::1]:443)"
                ));
            };
            match c.explain(&vip, client) {
                Ok(e) => Response::data(e),
                Err(e) => Response::error(e.to_string()),
            }
        }
        Request::Flows {
            vip,
            backend,
            limit,
            offset,
        } => match c.flows(vip.as_deref(), backend.as_deref(), limit, offset) {
            Ok(page) => Response::data(page),
            Err(e) => Response::error(e.to_string()),
        },
        Request::Rollout { .. } | Request::RolloutStatus | Request::RolloutAbort => {
            Response::error("internal error: a rollout request reached the controller")
        }
        Request::Trace { .. } | Request::HostDrain { .. } | Request::HostUndrain => {
            Response::error("internal error: a streaming or host request reached the controller")
        }
        Request::Teardown => match loader::teardown(&daemon.pin_dir) {
            Ok(removed) => {
                c.audit(&crate::history::Attempt {
                    time: crate::history::now(),
                    source: Source::Cli {
                        command: "teardown".into(),
                    },
                    user,
                    force: false,
                    reason: None,
                    outcome: "teardown".into(),
                    error: removed.to_string().replace('\n', "; "),
                    violations: Vec::new(),
                    running: c.current().map_or(0, |r| r.generation),
                });
                // Still during this turn: changes queued behind it are refused, not
                // applied to maps that are no longer pinned.
                d.stop(Stop::Teardown);
                super::socket::remove(&daemon.socket);
                Response::data(removed)
            }
            Err(e) => Response::error(e.to_string()),
        },
    }
}
