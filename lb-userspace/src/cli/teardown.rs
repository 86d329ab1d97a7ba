//! `xlb teardown`: through the daemon, or without one, the pin directory the operator names.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use xlb::{
    api::{self, Request},
    dataplane::loader,
};

use super::ok;

/// Through the daemon when one answers on `socket`; otherwise only the pin directory the
/// operator names (or the one of the config named, withdrawing its announcements first),
/// never a default.
pub(crate) fn teardown(
    socket: &Path,
    pin_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<u8, String> {
    let answer = api::call(socket, &Request::Teardown);
    let mut announce = None;
    let by_pin_dir = pin_dir.is_some();
    let pin_dir = match (&answer, pin_dir, config) {
        (Ok(_), _, _) => None,
        (Err(_), Some(dir), _) => Some(dir),
        (Err(_), None, Some(path)) => {
            let config = xlb::config::load(&path).map_err(|e| e.to_string())?;
            announce = config.daemon.announce;
            Some(config.daemon.pin_dir)
        }
        (Err(_), None, None) => None,
    };
    let report = match (answer, pin_dir) {
        (Ok(r), _) => ok(r)?.data,
        (Err(e), None) => {
            return Err(format!(
                "{e}\nnothing was torn down: without a daemon, name what to tear down with \
                 --config (the load balancer's config: its pin_dir, and its announcements are \
                 withdrawn first) or --pin-dir (the daemon.pin_dir)"
            ));
        }
        (Err(e), Some(dir)) => {
            // A daemon that holds the directory is running: only its socket may tear it
            // down, or it would go on answering for a data plane that is gone.
            let _lock = xlb::lock::for_teardown(&dir).map_err(|l| {
                format!(
                    "{l}\nnothing was torn down: {e}\nthat daemon is running: tear down \
                     through its socket (xlb --socket SOCKET teardown), or stop it first"
                )
            })?;
            match &announce {
                // Routers must stop sending before the program goes.
                Some(a) => {
                    xlb::bird::publish(a, &BTreeSet::new()).map_err(|e| {
                        format!(
                            "nothing was torn down: withdrawing the VIPs failed: {e}; with \
                             the routes still announced, detaching XDP would drop their \
                             traffic (fix BIRD, or empty {} yourself, then try again)",
                            a.routes_file.display()
                        )
                    })?;
                    say!(
                        "every VIP withdrawn ({} emptied, BIRD reconfigured); waiting {:?} \
                         (daemon.announce.drain_time)",
                        a.routes_file.display(),
                        a.drain_time
                    );
                    std::thread::sleep(a.drain_time);
                }
                None if by_pin_dir => eprintln!(
                    "xlb: note: with --pin-dir, a routes file this host announces through is \
                     left as it is: if its config has [daemon.announce], its VIPs stay \
                     announced; `xlb teardown --config FILE` withdraws them first"
                ),
                None => {}
            }
            serde_json::to_value(loader::teardown(&dir).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?
        }
    };
    let report: loader::Teardown = serde_json::from_value(report).map_err(|e| e.to_string())?;
    say!("{report}");
    Ok(0)
}
