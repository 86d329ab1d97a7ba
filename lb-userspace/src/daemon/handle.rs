//! One API request: wait for the controller's turn, drop a change whose client went away
//! while it waited, run the request on the controller, and log every change or attempt
//! with who asked, what, the outcome, and whether it was forced and why.

use std::{net::SocketAddr, sync::Arc};

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
        Request::History => "history".into(),
        Request::Apply { file, guarded, .. } => {
            format!("apply {}{}", file.display(), dry(guarded))
        }
        Request::WeightSet {
            vip,
            backend,
            weight,
            guarded,
            ..
        } => format!("weight set {vip} {backend} {weight}{}", dry(guarded)),
        Request::Rollback {
            generation,
            guarded,
        } => match generation {
            Some(g) => format!("rollback to generation {g}{}", dry(guarded)),
            None => format!("rollback to the previous generation{}", dry(guarded)),
        },
        Request::Explain { vip, client } => format!("explain {vip} {client}"),
        Request::Teardown => "teardown".into(),
    }
}

fn guarded(req: &Request) -> Guarded {
    match req {
        Request::Apply { guarded, .. }
        | Request::WeightSet { guarded, .. }
        | Request::Rollback { guarded, .. } => guarded.clone(),
        _ => Guarded::default(),
    }
}

/// The outcome of a change, for the log.
pub fn outcome(r: &Response) -> String {
    if r.ok {
        return match r.generation {
            Some(g) => format!("applied as generation {g}"),
            None if r.data.is_array() => format!(
                "removed {} pinned objects; XDP is detached",
                r.data.as_array().map_or(0, Vec::len)
            ),
            None => "nothing to change".into(),
        };
    }
    if r.violations.is_empty() {
        return format!("failed: {}", r.error);
    }
    format!("rejected by {}", rule_ids(&r.violations))
}

/// The distinct rule ids of `violations`, sorted: `max-backend-share, min-active-backends`.
pub fn rule_ids(violations: &[crate::guard::Violation]) -> String {
    let mut rules: Vec<&str> = violations.iter().map(|v| v.rule.id()).collect();
    rules.sort_unstable();
    rules.dedup();
    rules.join(", ")
}

/// Answers `req` from `user`, whose connection is `peer` (a raw fd, checked for hangup).
pub async fn handle(d: &Arc<Shared>, req: Request, user: String, peer: i32) -> Response {
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
    let rates = lock(&d.rates).clone();
    let shared = d.clone();
    let who = user.clone();
    let response = turn
        .run(move |c| execute(&shared, c, req, who, rates))
        .await
        .unwrap_or_else(Response::error);
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
    response
}

fn apply_response(result: Result<controller::Outcome, ApplyError>) -> Response {
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
    apply_response(c.apply(controller::Request {
        config,
        source,
        user,
        force: g.force,
        reason: g.reason,
        dry_run: g.dry_run,
    }))
}

/// `req` on the controller; runs on the blocking pool during the controller's turn.
fn execute(
    d: &Shared,
    c: &mut Controller,
    req: Request,
    user: String,
    rates: std::collections::BTreeMap<(String, String), super::Rates>,
) -> Response {
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
            })),
            Err(e) => Response::error(e.to_string()),
        },
        Request::History => match c.history().all() {
            Ok(records) => Response::data(records),
            Err(e) => Response::error(e.to_string()),
        },
        Request::Apply {
            mut config,
            file,
            guarded,
        } => {
            // Daemon settings take effect at `xlb run`; an apply changes VIPs and policy.
            config.daemon = daemon;
            apply_as(c, config, Source::File { file }, user, guarded)
        }
        Request::WeightSet {
            command,
            vip,
            backend,
            weight,
            guarded,
        } => {
            let Some(current) = c.current() else {
                return Response::error("no generation is applied yet; use `xlb apply FILE`");
            };
            let mut config = current.config.clone();
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
        Request::Rollback {
            generation,
            guarded,
        } => {
            let target = match generation {
                Some(g) => g,
                None => {
                    let gens = match c.history().generations() {
                        Ok(g) => g,
                        Err(e) => return Response::error(e.to_string()),
                    };
                    match gens.len() {
                        0 | 1 => {
                            return Response::error(
                                "there is no previous generation to roll back to",
                            );
                        }
                        n => gens[n - 2],
                    }
                }
            };
            let record = match c.history().get(target) {
                Ok(r) => r,
                Err(e) => return Response::error(e.to_string()),
            };
            let mut config = record.config;
            config.daemon = daemon;
            apply_as(c, config, Source::Rollback { to: target }, user, guarded)
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
        Request::Teardown => match loader::teardown(&daemon.pin_dir) {
            Ok(removed) => {
                // Still during this turn: changes queued behind it are refused, not
                // applied to maps that are no longer pinned.
                d.stop(Stop::Teardown);
                let _ = std::fs::remove_file(&daemon.socket);
                Response::data(removed)
            }
            Err(e) => Response::error(e.to_string()),
        },
    }
}
