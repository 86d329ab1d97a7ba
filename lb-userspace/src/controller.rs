//! The controller: the one place that changes the data plane. Every change (file, CLI
//! verb, reload, rollback) goes through `apply`: plan and guardrails (pure, `guard`),
//! MAC resolution (`macs`), holds for health (`failover`), id assignment (`ids`), then
//! map writes in an order that keeps every packet on one complete generation (`install`),
//! then the durable history record. `views` reads it back: `explain` and `stats`.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use serde::Serialize;
use thiserror::Error;

mod failover;
mod ids;
mod install;
mod macs;
mod names;
mod views;

pub use failover::{HealthChange, Holds, Panic};
pub use ids::{Capacity, assign_ids};
pub use install::vip_key;
pub use macs::MacRefresh;
pub use views::{BackendStatsView, Explain, FlowRow, FlowsPage, MAX_FLOWS_PAGE, VipStatsView};

use crate::{
    config::Config,
    dataplane::{DataplaneError, Maps},
    guard::{self, Health, Maglev, Plan},
    health::Tracker,
    history::{Attempt, History, HistoryError, Record, Source, now},
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("--force needs --reason: say why the guardrails are overridden")]
    ForceWithoutReason,
    #[error("rejected by {} guardrail violation(s); nothing was changed", .0.len())]
    Rejected(Vec<guard::Violation>, Box<Plan>),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "the maps hold no free {what} id: every id below daemon.{key} = {capacity} is in use \
         or still referenced by flows; raise daemon.{key} and restart `xlb run`, \
         which resizes the maps and keeps their contents"
    )]
    NoFreeId {
        what: &'static str,
        key: &'static str,
        capacity: u32,
    },
    #[error("data plane: {0}")]
    Dataplane(#[from] DataplaneError),
    #[error("{0}")]
    History(#[from] HistoryError),
    #[error("{0}; the previous generation was written back, nothing changed")]
    Restored(String),
    #[error("{error}; writing the previous generation back also failed: {restore}")]
    RestoreFailed { error: String, restore: String },
}

/// One requested change.
#[derive(Clone, Debug)]
pub struct Request {
    pub config: Config,
    pub source: Source,
    pub user: String,
    pub force: bool,
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// What `apply` did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    /// The new generation; `None` for a dry run or when nothing changed.
    pub generation: Option<u64>,
    pub dry_run: bool,
}

/// Resolves backends' MACs from their addresses (the neighbour table, in the daemon),
/// soliciting those not known yet and waiting up to the given time for all of them;
/// returns those it found.
pub type Resolver = Box<dyn Fn(&[IpAddr], Duration) -> BTreeMap<IpAddr, [u8; 6]> + Send>;

/// The tables `record` installs: its config at its effective weights (`Holds`),
/// reusing the tables of `reuse` whose input is the same.
fn installed(record: &Record, reuse: Option<&Plan>) -> Plan {
    let reuse = guard::Reuse {
        plan: reuse,
        builder: &Maglev,
    };
    guard::plan(
        &Holds::of(record).apply(&record.config),
        None,
        &Health::new(),
        &reuse,
    )
}

fn fingerprints(plan: &Plan) -> BTreeMap<String, String> {
    plan.vips
        .iter()
        .filter_map(|v| Some((v.vip.clone(), v.fingerprint.clone()?)))
        .collect()
}

/// Resolves through the neighbour table of `iface`.
pub fn neighbour_resolver(iface: String) -> Resolver {
    Box::new(move |addrs, wait| crate::neighbour::resolve(&iface, addrs, wait))
}

pub struct Controller {
    maps: Maps,
    history: History,
    current: Option<Record>,
    /// `current`'s tables and shares, built once per generation (not per read).
    current_plan: Option<Plan>,
    /// Up or down per checked backend (rise/fall over the probes).
    tracker: Tracker,
    /// VIPs in panic (too few backends up to take more out).
    panic: BTreeMap<String, Panic>,
    /// When each backend in slow start began its ramp (time since the daemon started).
    ramp_started: BTreeMap<String, Duration>,
    /// Time since the daemon started, as of the last probe round.
    clock: Duration,
    resolve: Resolver,
    /// The running generation, published on every commit.
    running: tokio::sync::watch::Sender<Option<Arc<Record>>>,
}

impl Controller {
    /// A controller over loaded maps and a history directory. Call `reconcile` next.
    pub fn new(maps: Maps, history: History, resolve: Resolver) -> Result<Self, ApplyError> {
        let current = history.latest()?;
        let mut controller = Controller {
            maps,
            history,
            current,
            current_plan: None,
            tracker: Tracker::default(),
            panic: BTreeMap::new(),
            ramp_started: BTreeMap::new(),
            clock: Duration::ZERO,
            resolve,
            running: tokio::sync::watch::Sender::new(None),
        };
        if let Some(mut record) = controller.current.take() {
            // Records written before MACs were recorded: take them from the maps.
            if record.macs.is_empty() && record.unresolved.is_empty() {
                (record.macs, record.unresolved) = controller.resolve_macs(&record.config, None);
            }
            controller.current_plan = Some(installed(&record, None));
            // What the running generation holds down stays down until its checks pass.
            controller.tracker = Tracker::starting_down(&record.down);
            controller
                .running
                .send_replace(Some(Arc::new(record.clone())));
            controller.current = Some(record);
        }
        Ok(controller)
    }

    /// The running generation, as it changes: every commit publishes its record.
    pub fn watch_running(&self) -> tokio::sync::watch::Receiver<Option<Arc<Record>>> {
        self.running.subscribe()
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn current(&self) -> Option<&Record> {
        self.current.as_ref()
    }

    /// Deletes idle flow entries and makes stateless the changed slots that no longer
    /// need state (see `crate::flowstate`).
    pub fn sweep_flows(&mut self, idle_ns: u64) -> Result<crate::dataplane::FlowSweep, ApplyError> {
        Ok(self.maps.sweep_flows(idle_ns)?)
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Up or down per checked backend, for the guardrails.
    pub fn health(&self) -> Health {
        self.tracker.health()
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Brings the maps to the last committed generation (after a restart or a crash in
    /// the middle of an apply). Backends and tables already right are left alone, so
    /// established flows keep their entries and backends.
    pub fn reconcile(&mut self) -> Result<(), ApplyError> {
        let (Some(record), Some(plan)) = (self.current.clone(), self.current_plan.clone()) else {
            return Ok(());
        };
        // The recorded MACs: a reconcile never waits on the neighbour table.
        self.write(&record, &plan, None, true)
    }

    /// Plans `req` and, unless it is rejected or dry, applies it and commits a generation.
    /// An attempt that is not dry and changes nothing is kept in the audit trail.
    pub fn apply(&mut self, req: Request) -> Result<Outcome, ApplyError> {
        let attempt = (!req.dry_run).then(|| Attempt {
            time: now(),
            source: req.source.clone(),
            user: req.user.clone(),
            force: req.force,
            reason: req.reason.clone(),
            outcome: String::new(),
            error: String::new(),
            violations: Vec::new(),
            running: self.current.as_ref().map_or(0, |r| r.generation),
        });
        let result = self.apply_unaudited(req);
        if let (Some(mut attempt), Err(e)) = (attempt, &result) {
            attempt.outcome = match e {
                ApplyError::Rejected(..) | ApplyError::ForceWithoutReason => "rejected",
                _ => "failed",
            }
            .into();
            attempt.error = e.to_string();
            if let ApplyError::Rejected(violations, _) = e {
                attempt.violations = violations.clone();
            }
            self.audit(&attempt);
        }
        result
    }

    /// Records an attempt that changed nothing. The audit trail is best effort: failing to
    /// write it must not turn a refusal into something else.
    pub fn audit(&self, attempt: &Attempt) {
        if let Err(e) = self.history.audit(attempt) {
            eprintln!("xlb: audit trail: {e}");
        }
    }

    fn apply_unaudited(&mut self, req: Request) -> Result<Outcome, ApplyError> {
        if req.force && req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(ApplyError::ForceWithoutReason);
        }
        let rollback = matches!(
            req.source,
            Source::Rollback { .. } | Source::AutoRollback { .. }
        );
        let (macs, unresolved) = self.resolve_macs(&req.config, self.current.as_ref());
        let holds = self.holds_for(&req.config, unresolved, self.clock);
        let running = self.current.as_ref().map(|r| &r.config);
        let builder = guard::Reuse {
            plan: self.current_plan.as_ref(),
            builder: &Maglev,
        };
        let plan = guard::plan(&req.config, running, &self.tracker.health(), &builder);
        // Rules measure what will serve traffic: with backends that have no MAC or are
        // down, the plan is that of the table really installed.
        let plan = self.effective_plan(&req.config, &holds, plan);
        let blocking: Vec<guard::Violation> = plan
            .blocking(req.force, !rollback)
            .into_iter()
            .cloned()
            .collect();
        if !blocking.is_empty() {
            return Err(ApplyError::Rejected(blocking, Box::new(plan)));
        }
        let unchanged = running.is_some() && plan.is_noop();
        if req.dry_run || unchanged {
            return Ok(Outcome {
                plan,
                generation: None,
                dry_run: req.dry_run,
            });
        }
        let old_ids = self
            .current
            .as_ref()
            .map(|r| r.ids.clone())
            .unwrap_or_default();
        let in_flows = self.maps.referenced_backend_ids();
        let maps = &self.maps;
        let ids = assign_ids(&old_ids, &req.config, maps.capacity(), |id| {
            !in_flows.contains(&id) && maps.backend(id).is_ok_and(|b| !b.is_live())
        })?;
        let mut record = Record {
            generation: self.next_generation()?,
            time: now(),
            source: req.source,
            user: req.user,
            reason: req.reason,
            force: req.force,
            fingerprints: BTreeMap::new(),
            // What --force really overrode: the violations that would have blocked.
            waived: if req.force {
                plan.blocking(false, !rollback)
                    .into_iter()
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            },
            config: req.config,
            ids,
            macs,
            unresolved: holds.unresolved,
            down: holds.down,
            ramp: holds.ramp,
        };
        // The plan's tables are the ones to install (unresolved backends at weight 0).
        record.fingerprints = fingerprints(&plan);
        let generation = self.commit(record, plan.clone())?;
        Ok(Outcome {
            plan,
            generation: Some(generation),
            dry_run: false,
        })
    }

    /// Generation `generation`'s VIPs and policy, to apply again, under the daemon's own
    /// `settings` (which only `xlb run` changes).
    pub fn config_of(
        &self,
        generation: u64,
        settings: &crate::config::Daemon,
    ) -> Result<Config, ApplyError> {
        let mut config = self.history.get(generation)?.config.without_lines();
        config.daemon = settings.clone();
        Ok(config)
    }

    /// The number the next generation gets.
    fn next_generation(&self) -> Result<u64, ApplyError> {
        Ok(self.history.generations()?.last().copied().unwrap_or(0) + 1)
    }

    /// Commits `next`, the running record with only its holds or MACs changed, as the
    /// daemon's own generation (`source`: health or neighbour). It moves share only between
    /// weights the guardrails accepted before and a backend's absence, so it is not
    /// planned against them; panic is what keeps health from concentrating traffic.
    fn commit_followup(&mut self, mut next: Record, source: Source) -> Result<u64, ApplyError> {
        next.generation = self.next_generation()?;
        next.time = now();
        next.source = source;
        next.user = "xlb".into();
        next.reason = None;
        next.force = false;
        next.waived.clear();
        let install = installed(&next, self.current_plan.as_ref());
        next.fingerprints = fingerprints(&install);
        self.commit(next, install)
    }
}
