//! What the daemon's tasks share: the controller behind one first-come-first-served lock,
//! the latest rates and counter sample, and whether the daemon is stopping.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::{OwnedMutexGuard, watch};

use super::rates::{Rates, Sample};
use crate::{config, controller::Controller};

/// Why the daemon stops, once it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Running,
    Signal(&'static str),
    Teardown,
}

pub(crate) struct Shared {
    /// tokio's mutex queues waiters in arrival order, so changes apply one at a time in
    /// the order they came; the controller runs on the blocking pool while it is held.
    controller: Arc<tokio::sync::Mutex<Controller>>,
    pub config_path: PathBuf,
    /// The `[daemon]` settings `xlb run` started with; they hold until it stops.
    pub settings: config::Daemon,
    /// Per (VIP, backend), over the sampler's last interval.
    pub rates: Mutex<BTreeMap<(String, String), Rates>>,
    /// The sampler's last reading, which `/metrics` serves while an apply holds the
    /// controller.
    pub sample: Mutex<Option<Arc<Sample>>>,
    /// How long the last health probe round took.
    pub health_round: Mutex<Option<Duration>>,
    /// Per VIP, new flows over the observation window (the watch's, else the last 60 s).
    pub observed: Mutex<BTreeMap<String, crate::watch::Observed>>,
    /// The watch in progress: generation, start, window.
    pub watching: Mutex<Option<(u64, tokio::time::Instant, Duration)>>,
    /// Watches that rolled their change back since the daemon started.
    pub auto_rollbacks: std::sync::atomic::AtomicU64,
    /// The running or last rollout, and the flag that aborts it.
    pub rollout: Mutex<Option<(super::rollouts::State, Arc<std::sync::atomic::AtomicBool>)>>,
    /// Finished rollouts by outcome (`completed`, `rolled_back`, `aborted`).
    pub rollouts: Mutex<BTreeMap<&'static str, u64>>,
    /// `xlb trace` clients and the program's trace switch.
    pub tracer: Arc<super::trace::Tracer>,
    /// The running generation, updated on every commit without waiting for a turn.
    pub running: watch::Receiver<Option<Arc<crate::history::Record>>>,
    /// The VIP announcement, with `[daemon.announce]`.
    pub announcing: Option<Arc<super::announcer::Announcing>>,
    /// What the flow sweeper found.
    pub sweeps: Mutex<super::flows::Sweeps>,
    stop: watch::Sender<Stop>,
}

/// A std mutex, recovered if a task panicked while holding it: the data is plain values
/// that a panic cannot leave half-written in a way that matters.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(
        controller: Controller,
        config_path: PathBuf,
        settings: config::Daemon,
        tracer: super::trace::Tracer,
    ) -> Self {
        let announcing = settings
            .announce
            .clone()
            .map(|a| Arc::new(super::announcer::Announcing::new(a, &settings.state_dir)));
        Shared {
            announcing,
            running: controller.watch_running(),
            controller: Arc::new(tokio::sync::Mutex::new(controller)),
            config_path,
            settings,
            rates: Mutex::new(BTreeMap::new()),
            sample: Mutex::new(None),
            health_round: Mutex::new(None),
            watching: Mutex::new(None),
            observed: Mutex::new(BTreeMap::new()),
            auto_rollbacks: std::sync::atomic::AtomicU64::new(0),
            rollout: Mutex::new(None),
            rollouts: Mutex::new([("completed", 0), ("rolled_back", 0), ("aborted", 0)].into()),
            tracer: Arc::new(tracer),
            sweeps: Mutex::new(super::flows::Sweeps::default()),
            stop: watch::Sender::new(Stop::Running),
        }
    }

    /// The daemon's own state for `/metrics`.
    pub(crate) fn exposition(&self) -> super::exposition::Daemon {
        super::exposition::Daemon {
            observed: lock(&self.observed).clone(),
            auto_rollbacks: self
                .auto_rollbacks
                .load(std::sync::atomic::Ordering::Relaxed),
            rollouts: lock(&self.rollouts).clone(),
            health_round: *lock(&self.health_round),
            trace_clients: self.tracer.clients(),
            fleet: super::fleet_metrics::Fleet {
                announce: self.announcing.as_ref().map(|a| a.view()),
                running: self.running.borrow().clone(),
                hash_seed: self.settings.hash_seed,
                table_size: self.settings.table_size,
            },
            flows: None,
        }
    }

    /// Waits for the controller: everyone who asked earlier has their turn first.
    pub(crate) async fn turn(&self) -> Turn {
        Turn(Arc::clone(&self.controller).lock_owned().await)
    }

    /// The controller's turn if it comes within `wait`.
    pub(crate) async fn turn_within(&self, wait: Duration) -> Option<Turn> {
        tokio::time::timeout(wait, self.turn()).await.ok()
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow() != Stop::Running
    }

    /// Starts stopping for `why`, unless already stopping.
    pub(crate) fn stop(&self, why: Stop) {
        self.stop.send_if_modified(|s| {
            let first = *s == Stop::Running;
            if first {
                *s = why;
            }
            first
        });
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Stop> {
        self.stop.subscribe()
    }
}

/// Resolves once the daemon is stopping; returns why.
pub(crate) async fn stopped(rx: &mut watch::Receiver<Stop>) -> Stop {
    match rx.wait_for(|s| *s != Stop::Running).await {
        Ok(s) => *s,
        // The sender lives in `Shared`, which outlives every task that waits here.
        Err(_) => Stop::Signal("shutdown"),
    }
}

/// The controller, held: nobody else uses it until this is dropped.
pub(crate) struct Turn(OwnedMutexGuard<Controller>);

impl Turn {
    /// Runs `f` on the blocking pool (the controller's map I/O blocks), then ends the turn.
    pub(crate) async fn run<R: Send + 'static>(
        self,
        f: impl FnOnce(&mut Controller) -> R + Send + 'static,
    ) -> Result<R, String> {
        let mut guard = self.0;
        tokio::task::spawn_blocking(move || f(&mut guard))
            .await
            .map_err(|e| format!("internal error in the daemon: {e}"))
    }

    /// For work without I/O (reading the running config, storing health results).
    pub(crate) fn controller(&mut self) -> &mut Controller {
        &mut self.0
    }
}
