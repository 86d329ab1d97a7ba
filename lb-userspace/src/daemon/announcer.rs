//! The announcer: keeps BIRD's routes file on what `announce::decide` says, on start,
//! on every new generation (health included), on `xlb host drain|undrain`, and every
//! second (then only asking BIRD whether it runs; a BIRD that was down or refused the
//! file gets it again), and withdraws everything when the daemon stops or tears down. Writing the file and `configure` happen one at a
//! time; once a stop withdrew, nothing announces again.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::state::{Shared, lock, stopped};
use crate::{
    announce::{self, Decision, Drained, Host, View, Why},
    bird,
    config::Announce,
    dataplane::pins,
};

/// How often the decision is made again without a trigger.
const RECHECK: Duration = Duration::from_secs(1);
/// The drain mark in the state directory.
const DRAINED_FILE: &str = "drained.json";

/// The announcement's state, shared by the announcer task, `xlb host` and the stop.
pub(crate) struct Announcing {
    pub settings: Announce,
    drained_file: PathBuf,
    drained: Mutex<Option<Drained>>,
    view: Mutex<View>,
    /// One write of the routes file and `configure` at a time.
    io: tokio::sync::Mutex<()>,
    /// A stop or teardown withdrew: every later write withdraws too.
    withdrawn: AtomicBool,
    /// Wakes the announcer (drain, undrain).
    pub wake: Notify,
}

impl Announcing {
    /// The announcement's state, with the drain mark a previous run left in `state_dir`.
    pub(crate) fn new(settings: Announce, state_dir: &Path) -> Announcing {
        let drained_file = state_dir.join(DRAINED_FILE);
        let drained = match std::fs::read(&drained_file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            read => match read
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Drained>(&b).map_err(|e| e.to_string()))
            {
                Ok(d) => {
                    info!(
                        "host drained since {} (Unix time) by {} ({}): no VIP is \
                         announced until `xlb host undrain`",
                        d.since,
                        d.user,
                        drained_file.display()
                    );
                    Some(d)
                }
                // Unreadable: drained is the safe side; undrain rewrites it.
                Err(e) => {
                    warn!(
                        "{}: {e}; treating the host as drained until `xlb host undrain`",
                        drained_file.display()
                    );
                    Some(Drained {
                        since: 0,
                        user: "unknown".into(),
                    })
                }
            },
        };
        Announcing {
            settings,
            drained_file,
            view: Mutex::new(View {
                drained: drained.clone(),
                ..View::default()
            }),
            drained: Mutex::new(drained),
            io: tokio::sync::Mutex::new(()),
            withdrawn: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    pub(crate) fn view(&self) -> View {
        lock(&self.view).clone()
    }

    pub(crate) fn drained(&self) -> Option<Drained> {
        lock(&self.drained).clone()
    }

    /// Sets or clears the drain mark, in memory and in the state directory.
    pub(crate) fn set_drained(&self, mark: Option<Drained>) -> Result<(), String> {
        let path = &self.drained_file;
        match &mark {
            Some(d) => {
                let text = serde_json::to_vec(d).map_err(|e| e.to_string())?;
                bird::replace_file(path, &text)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            None => match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", path.display())),
            },
        }
        lock(&self.view).drained.clone_from(&mark);
        *lock(&self.drained) = mark;
        self.wake.notify_one();
        Ok(())
    }
}

/// Runs until the daemon stops (without `[daemon.announce]`, returns at once).
pub(crate) async fn announcer(d: Arc<Shared>) {
    let Some(a) = d.announcing.clone() else {
        return;
    };
    let mut running = d.running.clone();
    let mut stop = d.subscribe();
    loop {
        let decisions = decide(&d, &a).await;
        publish(&a, decisions, d.stopping()).await;
        if d.stopping() {
            return;
        }
        tokio::select! {
            changed = running.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = a.wake.notified() => {}
            () = tokio::time::sleep(RECHECK) => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

/// Today's decision: the host's state, and each VIP's health from the counters' view.
async fn decide(d: &Shared, a: &Announcing) -> Vec<Decision> {
    let linked = d.settings.pin_dir.join(pins::LINK).exists();
    let read = d
        .turn()
        .await
        .run(|c| (c.current().cloned(), c.stats().ok()))
        .await;
    let (record, stats) = read.unwrap_or((None, None));
    let vips = record.as_ref().map_or_else(Vec::new, |r| {
        announce::vip_states(r, stats.as_deref().unwrap_or_default())
    });
    let host = Host {
        attached: linked && record.is_some(),
        stopping: d.stopping(),
        drained: a.drained().is_some(),
    };
    announce::decide(host, a.settings.min_healthy_backends, &vips)
}

/// Writes the routes file for `decisions` and has BIRD read it, unless BIRD already
/// runs exactly these routes; logs each VIP whose announcement changed.
async fn publish(a: &Arc<Announcing>, mut decisions: Vec<Decision>, stopping: bool) {
    let _io = a.io.lock().await;
    if stopping || a.withdrawn.load(Ordering::SeqCst) {
        for d in &mut decisions {
            d.announce = false;
            d.why = Why::Stopping;
        }
    }
    let routes = announce::routes(&decisions);
    let wanted: Vec<IpAddr> = routes.iter().copied().collect();
    let unchanged = {
        let mut view = lock(&a.view);
        for new in &decisions {
            let old = view.vips.iter().find(|o| o.vip == new.vip);
            if old.map(|o| (o.announce, &o.why)) != Some((new.announce, &new.why)) {
                if new.announce {
                    info!("announce: vip {} ({}): announced", new.vip, new.address);
                } else {
                    warn!(
                        "announce: vip {} ({}): withdrawn: {}",
                        new.vip, new.address, new.why
                    );
                }
            }
        }
        view.vips = decisions;
        view.applied && view.routes == wanted
    };
    let settings = a.settings.clone();
    // Nothing to change: BIRD is only asked whether it still runs (a BIRD that died took
    // the routes with its sessions; once back, it is given the file again).
    let result = tokio::task::spawn_blocking(move || {
        if unchanged {
            bird::command(&settings.bird_socket, "show status").map_err(|e| e.to_string())
        } else {
            bird::publish(&settings, &routes)
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("internal error: {e}")));
    let mut view = lock(&a.view);
    match result {
        Ok(_) if unchanged => {}
        Ok(reply) => {
            if view.error.is_some() || view.routes != wanted {
                info!("announce: BIRD took {} route(s): {reply}", wanted.len());
            }
            view.routes = wanted;
            view.applied = true;
            view.error = None;
        }
        Err(e) => {
            if view.error.as_deref() != Some(e.as_str()) {
                warn!("announce: {e}; trying again every {RECHECK:?}");
            }
            view.applied = false;
            view.error = Some(e);
        }
    }
}

/// A stop or teardown: withdraws every VIP, then waits `drain_time` for the routers to
/// move traffic away. Nothing announces again unless `resume` is called.
pub(crate) async fn withdraw_and_wait(d: &Shared) {
    let Some(a) = d.announcing.clone() else {
        return;
    };
    if a.withdrawn.swap(true, Ordering::SeqCst) {
        return;
    }
    let decisions = lock(&a.view).vips.clone();
    publish(&a, decisions, true).await;
    let wait = a.settings.drain_time;
    let error = lock(&a.view).error.clone();
    match error {
        None => {
            info!("announce: every VIP withdrawn; waiting {wait:?} (daemon.announce.drain_time)")
        }
        Some(e) => warn!("announce: withdrawing failed ({e}); waiting {wait:?} anyway"),
    }
    tokio::time::sleep(wait).await;
}

/// After a teardown that failed: announce again as the decision says.
pub(crate) fn resume(d: &Shared) {
    if let Some(a) = &d.announcing {
        a.withdrawn.store(false, Ordering::SeqCst);
        a.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcing(dir: &Path) -> Announcing {
        Announcing::new(Announce::default(), dir)
    }

    #[test]
    fn the_drain_mark_survives_a_restart_until_undrain() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(announcing(dir.path()).drained(), None);
        let mark = Drained {
            since: 1_800_000_000,
            user: "ops".into(),
        };
        announcing(dir.path())
            .set_drained(Some(mark.clone()))
            .unwrap();
        // A new daemon on the same state directory starts drained.
        let restarted = announcing(dir.path());
        assert_eq!(restarted.drained(), Some(mark.clone()));
        assert_eq!(restarted.view().drained, Some(mark));
        restarted.set_drained(None).unwrap();
        assert_eq!(announcing(dir.path()).drained(), None);
        // Undrain of a host that is not drained is no error.
        restarted.set_drained(None).unwrap();
    }

    #[test]
    fn an_unreadable_drain_mark_counts_as_drained() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DRAINED_FILE), "{not json").unwrap();
        let a = announcing(dir.path());
        assert_eq!(a.drained().map(|d| d.user), Some("unknown".into()));
    }
}
