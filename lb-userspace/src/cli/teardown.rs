//! `xlb teardown`: through the daemon, or without one, the pin directory the operator names.

use std::path::{Path, PathBuf};

use xlb::{
    api::{self, Request},
    dataplane::loader,
};

use super::ok;

/// Through the daemon when one answers on `socket`; otherwise only the pin directory the
/// operator names, never a default.
pub(crate) fn teardown(socket: &Path, pin_dir: Option<PathBuf>) -> Result<u8, String> {
    let report = match (api::call(socket, &Request::Teardown), pin_dir) {
        (Ok(r), _) => ok(r)?.data,
        (Err(e), None) => {
            return Err(format!(
                "{e}\nnothing was torn down: without a daemon, name the pin directory to tear \
                 down with --pin-dir (the daemon.pin_dir of the load balancer to remove)"
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
            serde_json::to_value(loader::teardown(&dir).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?
        }
    };
    let report: loader::Teardown = serde_json::from_value(report).map_err(|e| e.to_string())?;
    say!("{report}");
    Ok(0)
}
