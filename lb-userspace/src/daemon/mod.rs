//! `xlb run`: load or adopt the pinned data plane, reconcile it to the last committed
//! generation, apply the config file through the guardrails, then serve the CLI on a Unix
//! socket, re-read the file on SIGHUP, probe health, sample rates and serve `/metrics`
//! until SIGTERM, SIGINT or `xlb teardown`. The data plane does not depend on this
//! process: it keeps forwarding when the daemon stops or dies, and the next `xlb run`
//! adopts it.
//!
//! One tokio runtime runs it all: the API socket (`socket`), `/metrics` (`metrics`),
//! health probes (`health`), the 1 s sampler (`rates`), `xlb trace` (`trace`) and
//! signals (here). The controller
//! does blocking map I/O, so it sits behind one first-come-first-served lock and runs on
//! the blocking pool (`state`): changes apply one at a time in arrival order, and a long
//! apply never stalls an accept loop.

mod accept;
mod announcer;
mod exposition;
mod file;
mod fleet_metrics;
mod flows;
mod handle;
mod health;
mod host;
mod log;
mod metrics;
mod neighbours;
mod rates;
mod rollouts;
mod socket;
mod state;
mod sys;
mod trace;
mod watcher;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Semaphore,
};
use tracing::{info, warn};

use self::{
    file::FileError,
    state::{Shared, Stop, stopped},
};
pub use self::{host::DrainReport, rates::Rates};
use crate::{
    config,
    controller::{self, Controller},
    dataplane::{Dataplane, DataplaneError, LoadOptions},
    history::History,
    lock::Locks,
    reload::Trigger,
};

/// `xlb run`'s exit status when its config file stops it from starting (sysexits'
/// EX_CONFIG): unreadable, unparsable, no interface, or refused by the guardrails with no
/// generation to keep running. The unit's `RestartPreventExitStatus=` names it, so a config
/// problem does not restart in a loop.
pub const EXIT_CONFIG: u8 = 78;

/// The config file is why the daemon could not start (exit status [`EXIT_CONFIG`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(String);

/// How long a stop waits for an apply in progress and for answers still being written.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM/SIGINT or `xlb teardown`. `recreate_flow_table` allows
/// replacing a pinned flow table of another capacity.
pub fn run(config_path: &Path, recreate_flow_table: bool) -> anyhow::Result<()> {
    log::init();
    match sys::raise_nofile_limit() {
        Ok((before, after)) => info!("open files limit: {after} (soft limit was {before})"),
        Err(e) => warn!("open files limit: cannot raise the soft limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xlb")
        .build()
        .context("starting the runtime")?;
    let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.into());
    let result = rt.block_on(serve(&config_path, recreate_flow_table));
    // An apply still running past DRAIN_TIMEOUT is abandoned as a crash would be: the
    // next start reconciles.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// What `start` hands to `serve`.
struct Started {
    controller: Controller,
    daemon: config::Daemon,
    /// Held until the process ends: one daemon per state and pin directory.
    _locks: Locks,
    tracer: trace::Tracer,
    trace_records: aya_log::EbpfLogger<trace::Relay>,
}

/// Everything `xlb run` does before it serves: lock, load, attach, reconcile, then the
/// config file under the one-source-of-truth rules (`file`).
fn start(config_path: &Path, recreate_flow_table: bool) -> anyhow::Result<Started> {
    let config = config::load(config_path).map_err(|e| ConfigProblem(e.to_string()))?;
    let daemon = config.daemon.clone();
    let Some(iface) = daemon.interface.clone() else {
        return Err(ConfigProblem(format!(
            "{}: [daemon] interface is required by `xlb run` (the interface to attach XDP to)",
            config_path.display()
        ))
        .into());
    };
    // Every change reads the VIP's live table (an inner map, opened by its id) to carry
    // its flows over: without the capability that takes, a change would reset them.
    if sys::has_cap_sys_admin() == Some(false) {
        anyhow::bail!(
            "xlb run needs CAP_SYS_ADMIN: it opens each VIP's live table by its id \
             (BPF_MAP_GET_FD_BY_ID), which the kernel allows only with it (the unit's \
             CapabilityBoundingSet= must include it)"
        );
    }
    // Before any map, pin or attachment is touched: a second daemon changes nothing.
    let locks = crate::lock::acquire(&daemon.state_dir, &daemon.pin_dir)?;
    let history = History::open(&daemon.state_dir)?;
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: daemon.pin_dir.clone(),
        flow_capacity: daemon.flow_capacity,
        recreate_flow_table,
        max_vips: daemon.max_vips,
        max_backends: daemon.max_backends,
    })
    .map_err(|e| match e {
        // The config asks for what the pinned maps cannot become without a decision.
        DataplaneError::Resize { .. } | DataplaneError::FlowCapacity { .. } => {
            anyhow::Error::from(ConfigProblem(format!("{}: {e}", config_path.display())))
        }
        e => e.into(),
    })?;
    // Whether this start attaches XDP (rather than adopting an attachment).
    let attaches = !daemon.pin_dir.join(crate::dataplane::pins::LINK).exists();
    dp.attach(&iface, daemon.xdp_mode.into())?;
    dp.maps().set_hash_seed(daemon.hash_seed)?;
    dp.maps().set_flow_insert_rate(daemon.flow_insert_rate)?;
    dp.maps().set_udp_grace(daemon.udp_grace);
    let (tracer, trace_records) = trace::Tracer::take(&mut dp)?;
    let mut controller = Controller::new(
        dp.into_maps(),
        history,
        controller::neighbour_resolver(iface),
    )?;
    controller.reconcile()?;
    if let Some(r) = controller.current() {
        info!("adopted generation {} from the history", r.generation);
        for d in r.config.daemon.differences(&daemon) {
            warn!(
                "started with a setting that differs from generation {}'s: {d}",
                r.generation
            );
        }
    }
    let had_generation = controller.current().is_some();
    let user = sys::user_name(sys::uid()).unwrap_or_else(|| "root".into());
    match file::apply(&mut controller, config, config_path, Trigger::Startup, user) {
        Ok(()) => {}
        Err(FileError::Rejected) if !had_generation => {
            // Nothing was served before and nothing will be: a program this start
            // attached is not left on the interface.
            let detached = if attaches {
                match crate::dataplane::loader::teardown(&daemon.pin_dir) {
                    Ok(_) => "; XDP detached again".to_string(),
                    Err(e) => format!("; detaching XDP again failed: {e}"),
                }
            } else {
                String::new()
            };
            return Err(ConfigProblem(format!(
                "{} rejected by the guardrails and nothing was applied before{detached}",
                config_path.display()
            ))
            .into());
        }
        Err(FileError::Failed(e)) => return Err(e.into()),
        // Rejected or refused with a generation running: that generation stays.
        Err(FileError::Rejected | FileError::Refused) => {}
    }
    Ok(Started {
        controller,
        daemon,
        _locks: locks,
        tracer,
        trace_records,
    })
}

async fn serve(config_path: &Path, recreate_flow_table: bool) -> anyhow::Result<()> {
    // Registered first, so that a signal during startup waits for the loop below instead
    // of killing the process half-way.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let path = config_path.to_path_buf();
    let started = tokio::task::spawn_blocking(move || start(&path, recreate_flow_table)).await??;
    let Started {
        controller,
        daemon,
        _locks,
        tracer,
        trace_records,
    } = started;
    let listener = socket::listen(&daemon.socket, daemon.socket_group.as_deref())?;
    let metrics = match &daemon.metrics {
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                socket::remove(&daemon.socket);
                return Err(e).with_context(|| format!("daemon.metrics: binding {addr}"));
            }
        },
        None => None,
    };
    info!(
        "serving on {}, XDP on {}",
        daemon.socket.display(),
        daemon.interface.as_deref().unwrap_or("-")
    );
    let d = Arc::new(Shared::new(
        controller,
        config_path.to_path_buf(),
        daemon.clone(),
        tracer,
    ));
    let conns = Arc::new(Semaphore::new(socket::MAX_CONNECTIONS));
    tokio::spawn(socket::serve(listener, Arc::clone(&d), Arc::clone(&conns)));
    tokio::spawn(rates::sampler(Arc::clone(&d)));
    tokio::spawn(trace::reader(Arc::clone(&d), trace_records));
    tokio::spawn(trace::renewer(Arc::clone(&d)));
    tokio::spawn(health::checker(Arc::clone(&d)));
    tokio::spawn(flows::sweeper(Arc::clone(&d)));
    tokio::spawn(announcer::announcer(Arc::clone(&d)));
    if let Some(iface) = daemon.interface.clone() {
        tokio::spawn(neighbours::refresher(Arc::clone(&d), iface));
    }
    if let Some(l) = metrics {
        tokio::spawn(metrics::serve(l, Arc::clone(&d)));
    }
    // The data plane is attached, reconciled and on the config's generation (or the last
    // committed one), and the socket accepts: what `Type=notify` waits for.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving on {}", daemon.socket.display())),
    ]);
    let mut stop = d.subscribe();
    let why = loop {
        tokio::select! {
            _ = hup.recv() => {
                tokio::spawn(reload(Arc::clone(&d)));
            }
            _ = term.recv() => break Stop::Signal("SIGTERM"),
            _ = int.recv() => break Stop::Signal("SIGINT"),
            why = stopped(&mut stop) => break why,
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    d.stop(why);
    // Withdraw first and give the routers `drain_time` to move traffic away (a teardown
    // did so before it detached XDP).
    announcer::withdraw_and_wait(&d).await;
    socket::remove(&daemon.socket);
    // Let an apply in progress finish and every answer go out; queued changes are refused
    // now that the daemon is stopping.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        // Once this turn comes, no apply runs; it is released at once, so that requests
        // still queued behind it get their turn (and their refusal).
        drop(d.turn().await);
        conns.acquire_many(socket::MAX_CONNECTIONS as u32).await
    })
    .await;
    if drained.is_err() {
        warn!("requests still in progress after {DRAIN_TIMEOUT:?}; stopping without them");
    }
    match why {
        Stop::Teardown => info!("stopped after teardown"),
        Stop::Signal(s) => {
            info!("{s}: stopped; the data plane keeps forwarding on the last generation")
        }
        Stop::Running => {}
    }
    Ok(())
}

/// Tells the service manager (`$NOTIFY_SOCKET`, set by systemd for `Type=notify`) about
/// readiness, reloads and stopping; nothing without it.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!("cannot notify the service manager: {e}");
    }
}

/// SIGHUP: re-reads the config file and applies it as a change from user `SIGHUP`, in
/// its turn like any request.
async fn reload(d: Arc<Shared>) {
    // `systemctl reload` waits from RELOADING=1 until READY=1, which comes once the file
    // was applied, refused or rejected.
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(e) => warn!("cannot read the monotonic clock for the reload notification: {e}"),
    }
    reload_file(&d).await;
    notify(&[sd_notify::NotifyState::Ready]);
}

async fn reload_file(d: &Arc<Shared>) {
    let turn = d.turn().await;
    let path = d.config_path.clone();
    info!(user = "SIGHUP", "SIGHUP: re-reading {}", path.display());
    if d.stopping() {
        info!(
            user = "SIGHUP",
            "reload {}: cancelled: the daemon is stopping",
            path.display()
        );
        return;
    }
    let settings = d.settings.clone();
    let done = turn
        .run(move |c| {
            let mut config = match config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    warn!(user = "SIGHUP", "reload refused, nothing changed: {e}");
                    return;
                }
            };
            for diff in settings.differences(&config.daemon) {
                warn!(
                    user = "SIGHUP",
                    "reload: {diff} takes effect only at the next start"
                );
            }
            config.daemon = settings;
            #[expect(
                clippy::let_underscore_must_use,
                reason = "file::apply logs every outcome; a reload has no caller to return it to"
            )]
            let _ = file::apply(c, config, &path, Trigger::Reload, "SIGHUP".into());
        })
        .await;
    if let Err(e) = done {
        warn!(user = "SIGHUP", "reload failed: {e}");
    }
}
