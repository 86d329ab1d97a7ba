//! The CLI <-> daemon protocol: one JSON request line, one JSON response line, over the
//! daemon's Unix socket. `trace` alone streams: after its response line come
//! [`TraceLine`]s until the trace ends or the client goes away.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::guard::{Plan, Violation};

/// The longest request line the daemon reads, newline excluded. The largest config the
/// maps can hold (1024 VIPs, 4095 backends, 64-byte names, full-length IPv6 addresses,
/// every per-VIP override and a health check) encodes as an `apply` request of under
/// 2 MiB (`tests::the_largest_config_fits_the_request_line_limit` measures it); 16 MiB
/// leaves room for that to grow while bounding what one client can make the daemon
/// hold.
pub const MAX_REQUEST_LINE: usize = 16 << 20;

/// A reading request waits this long for its answer; a changing one waits for as long as
/// the changes queued before it take, because giving up would not cancel it once it
/// started.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How a change goes through the guardrails; shared by every changing request. Absent
/// fields mean a plain, unforced apply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Guarded {
    /// Plan and check only.
    pub dry_run: bool,
    /// Override the forceable guardrails; needs `reason`.
    pub force: bool,
    pub reason: Option<String>,
    /// Watch the change for this long after it took effect and roll it back on a breach
    /// (default: the config's `[rollout] watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Stats,
    /// Applied generations; with `all`, the audit trail of attempts that changed nothing.
    History {
        #[serde(default)]
        all: bool,
    },
    /// The running generation as a config file.
    Export,
    /// `xlb apply FILE` and `xlb diff FILE` (dry run). The daemon parses `text` itself,
    /// so what it applies and records is what it read; `file` only names it in reports.
    Apply {
        text: String,
        file: PathBuf,
        #[serde(flatten)]
        guarded: Guarded,
    },
    /// `xlb weight set`.
    WeightSet {
        vip: String,
        backend: String,
        weight: i64,
        #[serde(flatten)]
        guarded: Guarded,
    },
    /// `xlb drain`: weight 0.
    Drain {
        vip: String,
        backend: String,
        #[serde(flatten)]
        guarded: Guarded,
    },
    Rollback {
        generation: Option<u64>,
        /// The newest generation that ran its watch window without a breach.
        #[serde(default)]
        last_good: bool,
        #[serde(flatten)]
        guarded: Guarded,
    },
    Explain {
        vip: String,
        client: String,
    },
    /// `xlb flows`: flow entries (flows in changed slots), optionally of one VIP and
    /// backend, `limit` of them after skipping `offset`.
    Flows {
        vip: Option<String>,
        backend: Option<String>,
        limit: usize,
        offset: usize,
    },
    Teardown,
    /// `xlb apply FILE --steps N|auto --interval D`: walk to the file's weights in steps,
    /// each watched for `interval_ms`; `steps` none: as few as keep every step within the
    /// guardrails.
    Rollout {
        text: String,
        file: PathBuf,
        steps: Option<u32>,
        interval_ms: u64,
        #[serde(flatten)]
        guarded: Guarded,
    },
    /// The rollout in progress, or the last one.
    RolloutStatus,
    /// Stop the rollout in progress and return to where it started.
    RolloutAbort,
    /// `xlb host drain`: withdraw every VIP (kept across restarts until `HostUndrain`),
    /// then wait up to `timeout_ms` for this host's VIP traffic to stop.
    HostDrain {
        timeout_ms: u64,
    },
    /// `xlb host undrain`: announce again what the health allows.
    HostUndrain,
    /// `xlb trace`: stream the program's per-packet decisions.
    Trace {
        vip: Option<String>,
        backend: Option<String>,
        /// Verdict names; empty: every verdict of traffic to a VIP address.
        #[serde(default)]
        reasons: Vec<String>,
        /// End after this many records.
        count: Option<u64>,
        /// Records per second per CPU (default `trace::DEFAULT_RATE`).
        rate: Option<u32>,
    },
}

impl Request {
    /// Whether the daemon may change the data plane or the history for this request (a
    /// dry run does not).
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Apply { guarded, .. }
            | Request::WeightSet { guarded, .. }
            | Request::Drain { guarded, .. }
            | Request::Rollback { guarded, .. }
            | Request::Rollout { guarded, .. } => !guarded.dry_run,
            Request::Teardown
            | Request::RolloutAbort
            | Request::HostDrain { .. }
            | Request::HostUndrain => true,
            Request::Status
            | Request::Stats
            | Request::History { .. }
            | Request::Export
            | Request::Explain { .. }
            | Request::Flows { .. }
            | Request::RolloutStatus
            | Request::Trace { .. } => false,
        }
    }
}

/// Every answer has this shape; `data` depends on the request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong and what to do next, when `ok` is false.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Violations that rejected the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// The plan of an apply-like request (also when rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// The generation an apply created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// How the watch of a watched change ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<crate::history::WatchVerdict>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: message.into(),
            ..Response::default()
        }
    }

    pub fn data(data: impl Serialize) -> Response {
        match serde_json::to_value(data) {
            Ok(data) => Response {
                ok: true,
                data,
                ..Response::default()
            },
            Err(e) => Response::error(format!("encoding the answer: {e}")),
        }
    }
}

/// A line of a trace stream, after the response line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TraceLine {
    /// One packet's decision, received at `time_us` (µs since the Unix epoch).
    Record {
        time_us: u64,
        #[serde(flatten)]
        event: crate::trace::Event,
    },
    /// `records` records that matched were not shown, and why.
    Skipped { records: u64, why: String },
    /// Something the client should know, e.g. a new generation changed its VIP.
    Note { text: String },
    /// The trace is over: `done` when it showed the records asked for, otherwise ended
    /// by the daemon (stopping, or a new generation without the VIP or backend asked for).
    End { why: String, done: bool },
}

/// What a trace's response line carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceStarted {
    /// The generation whose names the records are shown with.
    pub generation: u64,
    /// The rate bound, records per second on each CPU.
    pub per_cpu_rate: u32,
}

/// Connects to the daemon at `socket` and sends `req`.
fn connect(socket: &Path, req: &Request) -> Result<(UnixStream, std::io::Result<()>), String> {
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    if line.len() > MAX_REQUEST_LINE {
        return Err(format!(
            "the request is {} bytes, over the daemon's limit of {MAX_REQUEST_LINE} bytes",
            line.len()
        ));
    }
    line.push(b'\n');
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the xlb daemon at {}: {e}; is `xlb run` running (systemctl status xlb), \
             and are you root or in its socket group?",
            socket.display()
        )
    })?;
    let sent = stream.write_all(&line);
    Ok((stream, sent))
}

/// Starts a trace: the daemon's response, then `each` on every following line until the
/// stream ends (`Ok`) or breaks (`Err`).
pub fn trace(
    socket: &Path,
    req: &Request,
    started: impl FnOnce(&Response),
    mut each: impl FnMut(TraceLine),
) -> Result<(), String> {
    let (stream, sent) = connect(socket, req)?;
    sent.map_err(|e| format!("sending to the daemon: {e}"))?;
    let mut lines = BufReader::new(stream).lines();
    let first = lines
        .next()
        .ok_or("the daemon closed the connection without answering")?
        .map_err(|e| format!("reading the daemon's answer: {e}"))?;
    let response: Response = serde_json::from_str(&first)
        .map_err(|e| format!("the daemon's answer is not valid: {e}"))?;
    let ok = response.ok;
    started(&response);
    if !ok {
        return Ok(());
    }
    for line in lines {
        let line = line.map_err(|e| format!("reading the trace: {e}"))?;
        let parsed: TraceLine = serde_json::from_str(&line)
            .map_err(|e| format!("the daemon sent an invalid trace line: {e}"))?;
        let end = matches!(parsed, TraceLine::End { .. });
        each(parsed);
        if end {
            return Ok(());
        }
    }
    Err("the daemon closed the trace (stopped or restarted?)".into())
}

/// Sends `req` to the daemon at `socket` and waits for its answer: without a time limit
/// for a changing request (its outcome is what the caller reports), `READ_TIMEOUT` for
/// the others.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let (stream, sent) = connect(socket, req)?;
    let changes = req.changes_state();
    stream
        .set_read_timeout((!changes).then_some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    // A daemon that refuses the request (too many connections, the line too long) answers
    // and closes without reading it all: its answer is still there to read, so a failed
    // send is reported only if no answer comes.
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        let why = match (sent, read) {
            (Err(e), _) => format!("sending to the daemon: {e}"),
            (_, Err(e)) => format!("reading the daemon's answer: {e}"),
            (_, Ok(_)) => "the daemon closed the connection without answering".to_string(),
        };
        return Err(if changes {
            format!("{why}; whether the change was applied is unknown: see `xlb history`")
        } else {
            why
        });
    }
    serde_json::from_str(&answer).map_err(|e| format!("the daemon's answer is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, Config, HealthCheck, PolicyOverride, Protocol, Vip};

    #[test]
    fn the_largest_config_fits_the_request_line_limit() {
        let name = |prefix: &str, i: usize| format!("{prefix}{i:0>63}");
        let vips = lb_common::maps::MAX_VIPS as usize;
        let backends = lb_common::maps::MAX_BACKENDS as usize - 1;
        let config = Config {
            vips: (0..vips)
                .map(|v| Vip {
                    name: name("v", v),
                    address: format!("2001:db8:ffff:ffff:ffff:ffff:ffff:{v:04x}"),
                    port: 65535,
                    protocol: Protocol::Tcp,
                    forwarding: crate::config::Forwarding::L2Dsr,
                    icmp_echo: true,
                    guardrails: PolicyOverride {
                        min_active_backends: Some(4_000_000_000),
                        max_backend_share: Some(0.123_456_789_012_345_67),
                        table_fidelity: Some(0.123_456_789_012_345_67),
                        max_flow_shift: Some(0.123_456_789_012_345_67),
                        healthy_quorum: Some(0.123_456_789_012_345_67),
                        panic_threshold: Some(0.123_456_789_012_345_67),
                    },
                    health: Some(HealthCheck {
                        interval_ms: 1_000_000,
                        timeout_ms: 1_000_000,
                        rise: u32::MAX,
                        fall: u32::MAX,
                        slow_start_s: Some(u64::MAX),
                        ..HealthCheck::tcp(65535)
                    }),
                    backends: (0..backends)
                        .filter(|b| b % vips == v)
                        .map(|b| BackendSpec {
                            name: name("b", b),
                            address: format!("2001:db8:ffff:ffff:ffff:ffff:ffff:{b:04x}"),
                            mac: "02:00:00:00:00:01".into(),
                            weight: 1_000_000,
                            line: None,
                        })
                        .collect(),
                    line: None,
                })
                .collect(),
            ..Config::default()
        };
        let request = Request::Apply {
            text: crate::config::to_toml(&config).unwrap(),
            file: PathBuf::from(format!("/{}", "f".repeat(4095))),
            guarded: Guarded {
                dry_run: true,
                force: true,
                reason: Some("r".repeat(4096)),
                watch_ms: Some(u64::MAX),
            },
        };
        let size = serde_json::to_vec(&request).unwrap().len();
        eprintln!("largest apply request: {size} bytes");
        assert!(size * 8 < MAX_REQUEST_LINE, "{size} bytes");
    }
}
