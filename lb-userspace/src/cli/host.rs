//! `xlb host drain|undrain`, and the announcement lines of `xlb status`.

use std::{path::Path, time::Duration};

use clap::Subcommand;
use xlb::{
    announce::View,
    api::{Request, Response},
    daemon::DrainReport,
};

use super::{
    call, ok,
    output::{ERROR, print_json},
};

#[derive(Subcommand)]
pub(crate) enum HostOp {
    /// Withdraw every VIP of this host from its routers (kept across reloads, restarts
    /// and teardowns until `xlb host undrain`), then wait until its VIP traffic stops.
    /// Exit 0 once the counters stayed still for a second, 2 at the timeout (the host
    /// stays drained).
    Drain {
        /// How long to wait for the traffic to stop.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Announce again every VIP that its health allows.
    Undrain {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn host(socket: &Path, op: HostOp) -> Result<u8, String> {
    match op {
        HostOp::Drain { timeout, json } => {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let r = ok(call(socket, &Request::HostDrain { timeout_ms })?)?;
            if json {
                print_json(&r.data)?;
            }
            let report: DrainReport = decode(r)?;
            if !json {
                say!(
                    "every VIP withdrawn in {} ms; the host stays drained until `xlb host undrain`",
                    report.withdrawn_ms
                );
                if report.quiet {
                    say!(
                        "{} packets since the drain began, the last {} ms after it (counters \
                         read every 100 ms); none for a second since",
                        report.packets_since,
                        report.last_packet_ms
                    );
                } else {
                    say!(
                        "traffic had not stopped when --timeout {} ms ran out ({} packets \
                         since the drain began, the last {} ms after it)",
                        report.timeout_ms,
                        report.packets_since,
                        report.last_packet_ms
                    );
                }
            }
            Ok(if report.quiet { 0 } else { ERROR })
        }
        HostOp::Undrain { json } => {
            let r = ok(call(socket, &Request::HostUndrain)?)?;
            if json {
                print_json(&r.data)?;
                return Ok(0);
            }
            print_view(&decode(r)?);
            Ok(0)
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(r: Response) -> Result<T, String> {
    serde_json::from_value(r.data).map_err(|e| format!("the daemon's answer: {e}"))
}

/// The announcement: drained or not, whether BIRD took the routes, each VIP.
pub(crate) fn print_view(v: &View) {
    match &v.drained {
        Some(d) => say!(
            "host DRAINED by {} at {} UTC: nothing announced (xlb host undrain)",
            d.user,
            super::output::utc(d.since)
        ),
        None => say!("host serving"),
    }
    match &v.error {
        Some(e) => say!("routing daemon: NOT APPLIED: {e}"),
        None => say!("routing daemon: {} route(s) announced", v.routes.len()),
    }
    for d in &v.vips {
        if d.announce {
            say!("  {} {}: announced", d.vip, d.address);
        } else {
            say!("  {} {}: withdrawn: {}", d.vip, d.address, d.why);
        }
    }
}
