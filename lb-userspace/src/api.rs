//! The CLI <-> daemon protocol: one JSON request line, one JSON response line, over the
//! daemon's Unix socket.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::guard::{Plan, Violation};

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
        #[serde(flatten)]
        guarded: Guarded,
    },
    Explain {
        vip: String,
        client: String,
    },
    Teardown,
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

/// Sends `req` to the daemon at `socket` and waits for its answer.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the xlb daemon at {}: {e}; is `xlb run` running (systemctl status xlb), \
             and are you root or in its socket group?",
            socket.display()
        )
    })?;
    // Applies resolve MACs and write whole tables; allow them time, but not forever.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("sending to the daemon: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("reading the daemon's answer: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("the daemon's answer is not valid: {e}"))
}
