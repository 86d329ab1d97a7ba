//! `xlb run`: load or adopt the pinned data plane, reconcile it to the last committed
//! generation, apply the config file through the guardrails, then serve the CLI on a Unix
//! socket, re-read the file on SIGHUP, probe health, sample rates and serve `/metrics`.
//! The data plane does not depend on this process: it keeps forwarding when the daemon
//! stops or dies, and the next `xlb run` adopts it.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::{
        fs::PermissionsExt,
        io::AsRawFd,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    api::{Guarded, Request, Response},
    config,
    controller::{self, ApplyError, Controller, VipStatsView},
    dataplane::{Dataplane, LoadOptions, loader},
    history::{Attempt, History, Source},
    reload::{FileCheck, Trigger},
};

struct Shared {
    controller: Controller,
    config_path: PathBuf,
    daemon: config::Daemon,
    /// The previous counter sample, for rates.
    sample: Option<(Instant, Vec<VipStatsView>)>,
    rates: BTreeMap<(String, String), Rates>,
    stop: bool,
}

/// Per-backend rates over the last sampling interval.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
    pub new_flows_per_s: f64,
}

type State = Arc<Mutex<Shared>>;

fn lock(state: &State) -> MutexGuard<'_, Shared> {
    // A panicked handler thread must not take the daemon down with it.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn log(msg: impl AsRef<str>) {
    eprintln!("xlb: {}", msg.as_ref());
}

/// The user behind a socket peer, from SO_PEERCRED.
fn peer_user(stream: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid fd, and cred/len describe a ucred-sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return "unknown".into();
    }
    user_name(cred.uid).unwrap_or_else(|| format!("uid {}", cred.uid))
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter; buf outlives the call's use of it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name points at a NUL-terminated string in buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

fn group_id(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: as in user_name.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// Blocks SIGHUP, SIGTERM and SIGINT in this thread (and every thread it spawns later),
/// so that one thread can take them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Creates the socket: parent directory 0755, socket 0600, or 0660 with `group`.
fn listen(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another xlb daemon is running (stop it first)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // Created under a tight umask, so the socket is never world-accessible, not even
    // between bind and chmod.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    if let Some(group) = group {
        let gid = group_id(group)
            .with_context(|| format!("daemon.socket_group: no group named {group:?}"))?;
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid C path; uid -1 leaves the owner unchanged.
        if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } != 0 {
            bail!(
                "chown {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

/// Runs the daemon until SIGTERM/SIGINT or `xlb teardown`.
pub fn run(config_path: &Path, recreate_flow_table: bool) -> anyhow::Result<()> {
    let sigset = block_signals();
    let config = config::load(config_path)?;
    let daemon = config.daemon.clone();
    let Some(iface) = daemon.interface.clone() else {
        bail!(
            "{}: [daemon] interface is required by `xlb run` (the interface to attach XDP to)",
            config_path.display()
        );
    };
    // Before any map, pin or attachment is touched: a second daemon changes nothing.
    let _locks = crate::lock::acquire(&daemon.state_dir, &daemon.pin_dir)?;
    let config_path = &std::path::absolute(config_path).unwrap_or_else(|_| config_path.into());
    let history = History::open(&daemon.state_dir)?;
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: daemon.pin_dir.clone(),
        flow_capacity: daemon.flow_capacity,
        recreate_flow_table,
    })?;
    dp.attach(&iface, daemon.xdp_mode.into())?;
    dp.maps().set_hash_seed(daemon.hash_seed)?;
    let mut controller = Controller::new(
        dp.into_maps(),
        history,
        controller::neighbour_resolver(iface.clone()),
    )?;
    controller.reconcile()?;
    if let Some(r) = controller.current() {
        log(format!(
            "adopted generation {} from the history",
            r.generation
        ));
    }
    if let Some(r) = controller.current() {
        for d in r.config.daemon.differences(&daemon) {
            log(format!(
                "started with a setting that differs from generation {}'s: {d}",
                r.generation
            ));
        }
    }
    let had_generation = controller.current().is_some();
    let user = user_name(unsafe_getuid()).unwrap_or_else(|| "root".into());
    match apply_file(&mut controller, config, config_path, true, user) {
        Ok(()) => {}
        Err(FileError::Rejected) if !had_generation => {
            bail!(
                "{} rejected by the guardrails and nothing was applied before",
                config_path.display()
            );
        }
        Err(FileError::Failed(e)) => return Err(e.into()),
        // Rejected or refused with a generation running: that generation stays.
        Err(_) => {}
    }
    let listener = listen(&daemon.socket, daemon.socket_group.as_deref())?;
    log(format!(
        "serving on {}, XDP on {iface}",
        daemon.socket.display()
    ));
    let state: State = Arc::new(Mutex::new(Shared {
        controller,
        config_path: config_path.to_path_buf(),
        daemon: daemon.clone(),
        sample: None,
        rates: BTreeMap::new(),
        stop: false,
    }));
    {
        let state = state.clone();
        thread::spawn(move || serve(listener, state));
    }
    {
        let state = state.clone();
        thread::spawn(move || sampler(state));
    }
    {
        let state = state.clone();
        thread::spawn(move || health_checker(state));
    }
    {
        let state = state.clone();
        let iface = iface.clone();
        thread::spawn(move || mac_refresher(state, &iface));
    }
    if let Some(addr) = &daemon.metrics {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("daemon.metrics: binding {addr}"))?;
        let state = state.clone();
        thread::spawn(move || metrics(listener, state));
    }
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigset holds the blocked signals; sig is a valid out-pointer.
        let rc = unsafe { libc::sigwait(&sigset, &mut sig) };
        if rc != 0 {
            continue;
        }
        if sig == libc::SIGHUP {
            reload(&state);
            continue;
        }
        break;
    }
    let _ = std::fs::remove_file(&daemon.socket);
    log("stopped; the data plane keeps forwarding on the last generation");
    Ok(())
}

fn unsafe_getuid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

fn reload(state: &State) {
    let mut s = lock(state);
    let path = s.config_path.clone();
    log(format!("SIGHUP: re-reading {}", path.display()));
    let mut config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            log(format!("reload refused, nothing changed: {e}"));
            return;
        }
    };
    for d in s.daemon.differences(&config.daemon) {
        log(format!("reload: {d} takes effect only at the next start"));
    }
    config.daemon = s.daemon.clone();
    let _ = apply_file(&mut s.controller, config, &path, false, "SIGHUP".into());
}

/// Why the daemon's config file was not applied.
enum FileError {
    Rejected,
    Refused,
    Failed(ApplyError),
}

/// Applies the daemon's own config file at start or on SIGHUP, under the one source of
/// truth rules (`reload`): only when it differs from what was last applied from it, never
/// undoing changes made since by other means, always through the guardrails.
fn apply_file(
    controller: &mut Controller,
    config: config::Config,
    path: &Path,
    startup: bool,
    user: String,
) -> Result<(), FileError> {
    let what = if startup { "startup" } else { "reload" };
    let last = controller
        .history()
        .newest(|r| crate::reload::from_file(r, path))
        .map_err(|e| FileError::Failed(e.into()))?;
    let source = if startup {
        Source::Startup {
            file: path.to_path_buf(),
        }
    } else {
        Source::Reload {
            file: path.to_path_buf(),
        }
    };
    let trigger = if startup {
        Trigger::Startup
    } else {
        Trigger::Reload
    };
    match crate::reload::check(trigger, &config, controller.current(), last.as_ref()) {
        FileCheck::Unchanged { since } => {
            log(format!(
                "{what}: {} is unchanged since generation {since} applied it; running \
                 generation {}",
                path.display(),
                controller.current().map_or(0, |r| r.generation)
            ));
            Ok(())
        }
        FileCheck::WouldUndo(items) => {
            let error = format!(
                "{what} refused, nothing changed: {} differs from the running generation in \
                 {} place(s) changed since the file was last applied, and applying it would \
                 undo them; apply it anyway with `xlb apply {}`, or bring the file in line \
                 with `xlb export`",
                path.display(),
                items.len(),
                path.display()
            );
            log(&error);
            items.iter().for_each(|i| log(format!("  would undo {i}")));
            controller.audit(&Attempt {
                time: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                source,
                user,
                force: false,
                reason: None,
                outcome: "refused".into(),
                error: format!("{error}: {}", items.join("; ")),
                violations: Vec::new(),
            });
            Err(FileError::Refused)
        }
        FileCheck::Apply => {
            let req = controller::Request {
                config,
                source,
                user,
                force: false,
                reason: None,
                dry_run: false,
            };
            match controller.apply(req) {
                Ok(o) => {
                    match o.generation {
                        Some(g) => log(format!(
                            "{what}: applied {} as generation {g}",
                            path.display()
                        )),
                        None => log(format!("{what}: {} is already applied", path.display())),
                    }
                    Ok(())
                }
                Err(ApplyError::Rejected(violations, _)) => {
                    log(format!(
                        "{what}: {} rejected by the guardrails, nothing changed:",
                        path.display()
                    ));
                    violations.iter().for_each(|v| log(v.located(path)));
                    Err(FileError::Rejected)
                }
                Err(e) => {
                    log(format!("{what} failed: {e}"));
                    Err(FileError::Failed(e))
                }
            }
        }
    }
}

fn serve(listener: UnixListener, state: State) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let state = state.clone();
        thread::spawn(move || {
            let user = peer_user(&conn);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut line = String::new();
            let Ok(mut writer) = conn.try_clone() else {
                return;
            };
            if BufReader::new(conn).read_line(&mut line).is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(req) => handle(&state, req, user),
                Err(e) => Response::error(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = writer.write_all(&out);
            if lock(&state).stop {
                // `xlb teardown`: the data plane is gone, and so is the daemon.
                std::process::exit(0);
            }
        });
    }
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
    s: &mut Shared,
    config: config::Config,
    source: Source,
    user: String,
    g: Guarded,
) -> Response {
    apply_response(s.controller.apply(controller::Request {
        config,
        source,
        user,
        force: g.force,
        reason: g.reason,
        dry_run: g.dry_run,
    }))
}

/// `xlb weight set` and `xlb drain`. The history's command line is made here from the
/// names the running config has, never taken from the client.
fn weight_set(
    s: &mut Shared,
    vip: String,
    backend: String,
    weight: i64,
    user: String,
    guarded: Guarded,
    verb: &str,
) -> Response {
    let Some(current) = s.controller.current() else {
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
    let command = if verb == "drain" {
        format!("drain {vip} {backend}")
    } else {
        format!("weight set {vip} {backend} {weight}")
    };
    apply_as(s, config, Source::Cli { command }, user, guarded)
}

/// Applied generations, and with `all` the audited attempts too, oldest first.
fn history(controller: &Controller, all: bool) -> Response {
    let records = match controller.history().all() {
        Ok(r) => r,
        Err(e) => return Response::error(e.to_string()),
    };
    if !all {
        return Response::data(records);
    }
    match controller.history().attempts() {
        Ok(attempts) => Response::data(serde_json::json!({
            "records": records, "attempts": attempts})),
        Err(e) => Response::error(e.to_string()),
    }
}

fn handle(state: &State, req: Request, user: String) -> Response {
    let mut s = lock(state);
    let daemon = s.daemon.clone();
    match req {
        Request::Status | Request::Stats => match s.controller.stats() {
            Ok(stats) => Response::data(serde_json::json!({
                "generation": s.controller.current().map(|r| r.generation),
                "interface": daemon.interface,
                "xdp_mode": daemon.xdp_mode,
                "vips": stats,
                "rates": s.rates.iter().map(|((v, b), r)| serde_json::json!({
                    "vip": v, "backend": b, "rates": r})).collect::<Vec<_>>(),
            })),
            Err(e) => Response::error(e.to_string()),
        },
        Request::History { all } => history(&s.controller, all),
        Request::Export => match s.controller.current() {
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
            let file = crate::reload::file_label(&file);
            let mut config = match config::parse(&text, &file) {
                Ok(c) => c,
                Err(e) => return Response::error(e.to_string()),
            };
            // Daemon settings take effect at `xlb run`; an apply changes VIPs and policy.
            let restart = daemon.differences(&config.daemon);
            config.daemon = daemon;
            let mut r = apply_as(&mut s, config, Source::File { file }, user, guarded);
            if let Some(plan) = &mut r.plan {
                plan.restart = restart;
            }
            r
        }
        Request::Drain {
            vip,
            backend,
            guarded,
        } => weight_set(&mut s, vip, backend, 0, user, guarded, "drain"),
        Request::WeightSet {
            vip,
            backend,
            weight,
            guarded,
        } => weight_set(&mut s, vip, backend, weight, user, guarded, "weight set"),
        Request::Rollback {
            generation,
            guarded,
        } => {
            let target = match generation {
                Some(g) => g,
                None => {
                    let gens = match s.controller.history().generations() {
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
            let record = match s.controller.history().get(target) {
                Ok(r) => r,
                Err(e) => return Response::error(e.to_string()),
            };
            let mut config = record.config.without_lines();
            config.daemon = daemon;
            apply_as(
                &mut s,
                config,
                Source::Rollback { to: target },
                user,
                guarded,
            )
        }
        Request::Explain { vip, client } => {
            let Ok(client) = client.parse::<SocketAddr>() else {
                return Response::error(format!(
                    "{client:?} is not CLIENT_IP:PORT (for IPv6: [2001:db8::1]:443)"
                ));
            };
            match s.controller.explain(&vip, client) {
                Ok(e) => Response::data(e),
                Err(e) => Response::error(e.to_string()),
            }
        }
        Request::Teardown => match loader::teardown(&daemon.pin_dir) {
            Ok(removed) => {
                s.stop = true;
                let _ = std::fs::remove_file(&daemon.socket);
                Response::data(removed)
            }
            Err(e) => Response::error(e.to_string()),
        },
    }
}

/// Samples counters every second for rates.
fn sampler(state: State) {
    loop {
        thread::sleep(Duration::from_secs(1));
        let mut s = lock(&state);
        let Ok(now) = s.controller.stats() else {
            continue;
        };
        let t = Instant::now();
        if let Some((then, prev)) = &s.sample {
            let dt = t.duration_since(*then).as_secs_f64().max(1e-3);
            let mut rates = BTreeMap::new();
            for v in &now {
                for b in &v.backends {
                    let old = prev
                        .iter()
                        .find(|p| p.vip == v.vip)
                        .and_then(|p| p.backends.iter().find(|x| x.id == b.id));
                    let d = |new: u64, old: u64| new.saturating_sub(old) as f64 / dt;
                    let r = old.map_or(Rates::default(), |o| Rates {
                        packets_per_s: d(b.packets, o.packets),
                        bytes_per_s: d(b.bytes, o.bytes),
                        new_flows_per_s: d(b.new_flows, o.new_flows),
                    });
                    rates.insert((v.vip.clone(), b.backend.clone()), r);
                }
            }
            s.rates = rates;
        }
        s.sample = Some((t, now));
    }
}

/// TCP-connects to every backend of VIPs with `[vip.health]`; results feed the
/// `healthy-quorum` guardrail and `xlb status`.
fn health_checker(state: State) {
    loop {
        // The checked VIPs of the running generation, read under one lock.
        let vips: Vec<config::Vip> = lock(&state)
            .controller
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
        let mut health = crate::guard::Health::new();
        // The shortest configured interval; 1 s while nothing is checked.
        let mut interval: Option<u64> = None;
        for v in &vips {
            let Some(h) = &v.health else { continue };
            interval = Some(interval.map_or(h.interval_ms, |i| i.min(h.interval_ms)));
            for b in &v.backends {
                let Ok(ip) = b.address.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, h.port);
                let up =
                    TcpStream::connect_timeout(&addr, Duration::from_millis(h.timeout_ms)).is_ok();
                health.insert((v.name.clone(), b.name.clone()), up);
            }
        }
        lock(&state).controller.set_health(health);
        thread::sleep(Duration::from_millis(interval.unwrap_or(1000).max(100)));
    }
}

/// How often the neighbour table is read for `mac = "neighbour"` backends.
const MAC_REFRESH: Duration = Duration::from_secs(1);

/// Reads the neighbour table, has the kernel re-validate settled entries of `neighbour`
/// backends and solicit failed or missing ones (`neighbour`), and lets the controller
/// commit any MAC that changed or resolved at last.
fn mac_refresher(state: State, iface: &str) {
    loop {
        thread::sleep(MAC_REFRESH);
        let addrs = lock(&state).controller.neighbour_backends();
        if addrs.is_empty() {
            continue;
        }
        let entries = match crate::neighbour::entries(iface, None) {
            Ok(e) => e,
            Err(e) => {
                log(format!("neighbour table: {e}"));
                continue;
            }
        };
        use crate::neighbour::Nud;
        let state_of = |a: &IpAddr| entries.iter().find(|(x, _)| x == a).map(|(_, e)| e.state);
        let settled: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| state_of(a) == Some(Nud::Settled))
            .collect();
        if let Err(e) = crate::neighbour::revalidate(iface, &settled) {
            log(format!("neighbour table: {e}"));
        }
        for a in addrs
            .iter()
            .filter(|a| matches!(state_of(a), None | Some(Nud::Failed)))
        {
            crate::neighbour::solicit(*a);
        }
        let seen: BTreeMap<IpAddr, [u8; 6]> = entries
            .iter()
            .filter_map(|(a, e)| Some((*a, e.mac?)))
            .collect();
        match lock(&state).controller.refresh_macs(&seen) {
            Ok(Some(r)) => log(format!(
                "neighbour: {} applied as generation {}",
                r.changes.join(", "),
                r.generation
            )),
            Ok(None) => {}
            Err(e) => log(format!("neighbour: applying a MAC change failed: {e}")),
        }
    }
}

/// Serves `GET /metrics` in the Prometheus text format.
fn metrics(listener: TcpListener, state: State) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).unwrap_or(0);
        let ok = buf[..n].starts_with(b"GET /metrics");
        let body = if ok {
            let s = lock(&state);
            render_metrics(s.controller.stats().unwrap_or_default(), &s.controller)
        } else {
            "only GET /metrics is served\n".to_string()
        };
        let status = if ok { "200 OK" } else { "404 Not Found" };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

fn render_metrics(stats: Vec<VipStatsView>, controller: &Controller) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let generation = controller.current().map_or(0, |r| r.generation);
    let _ = writeln!(
        out,
        "# TYPE xlb_generation gauge\nxlb_generation {generation}"
    );
    for (metric, kind) in [
        ("xlb_backend_packets_total", "counter"),
        ("xlb_backend_bytes_total", "counter"),
        ("xlb_backend_new_flows_total", "counter"),
        ("xlb_backend_weight", "gauge"),
        ("xlb_backend_table_share", "gauge"),
    ] {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for v in &stats {
            for b in &v.backends {
                let value = match metric {
                    "xlb_backend_packets_total" => b.packets as f64,
                    "xlb_backend_bytes_total" => b.bytes as f64,
                    "xlb_backend_new_flows_total" => b.new_flows as f64,
                    "xlb_backend_weight" => f64::from(b.weight),
                    _ => b.table_share,
                };
                let _ = writeln!(
                    out,
                    "{metric}{{vip=\"{}\",backend=\"{}\"}} {value}",
                    v.vip, b.backend
                );
            }
        }
    }
    let _ = writeln!(out, "# TYPE xlb_vip_drops_total counter");
    for v in &stats {
        let _ = writeln!(out, "xlb_vip_drops_total{{vip=\"{}\"}} {}", v.vip, v.drops);
    }
    if let Ok(reasons) = controller.maps().reason_stats() {
        let _ = writeln!(out, "# TYPE xlb_packets_total counter");
        for (reason, s) in reasons {
            let _ = writeln!(
                out,
                "xlb_packets_total{{reason=\"{}\"}} {}",
                reason.name(),
                s.packets
            );
        }
    }
    out
}
