//! Durable history of applied generations: one JSON file per generation under
//! `<state_dir>/history/`, written to a temporary file, fsynced, renamed into place and
//! the directory fsynced, so a crash leaves either the whole record or none of it. The
//! newest record is the committed state a restarted daemon reconciles to.
//!
//! Attempts that changed nothing (rejected by the guardrails, refused, or failed and
//! rolled back) and teardowns go to the audit trail, `<state_dir>/audit.jsonl`, one JSON
//! line each, appended and fsynced: `xlb history --all` shows both.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{config::Config, guard::Violation};

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("history {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("history {}: not a generation record: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("generation {generation} is not in the history (see `xlb history`)")]
    Unknown { generation: u64 },
}

/// What caused a generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// `xlb run` starting from its config file.
    Startup { file: PathBuf },
    /// `xlb apply FILE`.
    File { file: PathBuf },
    /// SIGHUP re-read of the daemon's config file.
    Reload { file: PathBuf },
    /// `xlb weight set` or `xlb drain`.
    Cli { command: String },
    /// `xlb rollback`.
    Rollback { to: u64 },
    /// The neighbour table changed a backend's MAC (or resolved one at last).
    Neighbour { changes: Vec<String> },
    /// Health checks took backends out of new-flow selection or brought them back.
    Health { changes: Vec<String> },
    /// A watched change breached its watch and was rolled back to `to`.
    AutoRollback { to: u64, breach: String },
    /// Step `step` of `steps` of a rollout towards `target`.
    Rollout {
        step: u32,
        steps: u32,
        target: String,
    },
}

impl Source {
    /// Whether the daemon made this generation itself, following the backends (health,
    /// neighbour table) rather than an operator's change.
    pub fn is_followup(&self) -> bool {
        matches!(self, Source::Health { .. } | Source::Neighbour { .. })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Startup { file } => write!(f, "startup {}", file.display()),
            Source::File { file } => write!(f, "apply {}", file.display()),
            Source::Reload { file } => write!(f, "reload {}", file.display()),
            Source::Cli { command } => f.write_str(command),
            Source::Rollback { to } => write!(f, "rollback to {to}"),
            Source::Neighbour { changes } => write!(f, "neighbour: {}", changes.join(", ")),
            Source::Health { changes } => write!(f, "health: {}", changes.join(", ")),
            Source::AutoRollback { to, breach } => write!(f, "auto-rollback to {to}: {breach}"),
            Source::Rollout {
                step,
                steps,
                target,
            } => write!(f, "rollout step {step}/{steps} to {target}"),
        }
    }
}

/// Ids the data plane knows VIPs and backends by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// VIP name -> vip_id.
    pub vips: BTreeMap<String, u32>,
    /// "vip/backend" -> backend id.
    pub backends: BTreeMap<String, u32>,
}

impl Ids {
    pub fn backend_key(vip: &str, backend: &str) -> String {
        format!("{vip}/{backend}")
    }

    pub fn backend(&self, vip: &str, backend: &str) -> Option<u32> {
        self.backends.get(&Self::backend_key(vip, backend)).copied()
    }
}

/// One applied generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub generation: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub source: Source,
    pub user: String,
    pub reason: Option<String>,
    pub force: bool,
    /// The VIPs and policy that were applied (daemon settings included as they were).
    pub config: Config,
    pub ids: Ids,
    /// VIP name -> fingerprint of its installed table (`guard::NamedTable::fingerprint`).
    pub fingerprints: BTreeMap<String, String>,
    /// What `--force` overrode: each violation with its measured value and limit (for
    /// `policy-loosening`, the old and the new limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waived: Vec<Violation>,
    /// "vip/backend" -> the MAC this generation installed for it.
    #[serde(default)]
    pub macs: BTreeMap<String, String>,
    /// "vip/backend" of backends without a MAC: no slot in the table, not live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<String>,
    /// "vip/backend" of backends whose checks fail: no slot in the table (effective
    /// weight 0), still live, so their established flows stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub down: Vec<String>,
    /// "vip/backend" -> percent of its weight, for backends in slow start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ramp: BTreeMap<String, u32>,
}

impl Record {
    /// A generation of `config` from `source` by root, for unit tests: nothing forced,
    /// waived, down or unresolved; no ids, fingerprints or MACs.
    #[cfg(test)]
    pub fn fixture(generation: u64, source: Source, config: Config) -> Record {
        Record {
            generation,
            time: generation,
            source,
            user: "root".into(),
            reason: None,
            force: false,
            config,
            ids: Ids::default(),
            fingerprints: BTreeMap::new(),
            waived: Vec::new(),
            macs: BTreeMap::new(),
            unresolved: Vec::new(),
            down: Vec::new(),
            ramp: BTreeMap::new(),
        }
    }

    /// The MAC this generation installed for `backend` of `vip`.
    pub fn mac(&self, vip: &str, backend: &str) -> Option<[u8; 6]> {
        self.macs
            .get(&Ids::backend_key(vip, backend))
            .and_then(|m| crate::guard::parse_mac(m))
    }
}

/// How a watched generation's window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchOutcome {
    /// The window ran out without a breach: a known-good generation.
    Passed,
    /// A breach rolled it back.
    Breached,
    /// Another change replaced it before the window ended.
    Superseded,
    /// The rollout it was a step of was aborted.
    Aborted,
}

/// One watch's end, in `<state_dir>/watch.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchVerdict {
    pub generation: u64,
    pub outcome: WatchOutcome,
    /// The breach, or what superseded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub window_ms: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// The generation it was rolled back to, after a breach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<u64>,
}

/// Appends `value` to `path` as one JSON line, fsynced.
fn append<T: Serialize>(path: &Path, value: &T) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut line = serde_json::to_vec(value).map_err(|source| HistoryError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    line.push(b'\n');
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    f.write_all(&line).map_err(io)?;
    f.sync_data().map_err(io)
}

/// Every JSON line of `path` (none if it does not exist); a line cut short by a crash is
/// skipped.
fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, HistoryError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(HistoryError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Seconds since the Unix epoch: the time of records and attempts.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One attempt that changed nothing, for the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub source: Source,
    pub user: String,
    pub force: bool,
    pub reason: Option<String>,
    /// `rejected` (guardrails), `refused` (e.g. a reload that would undo CLI changes),
    /// `failed` (the data plane refused a write; the previous generation was restored) or
    /// `teardown` (everything unpinned; the one entry that did change something).
    pub outcome: String,
    /// The generation running when it was attempted (0: none), which orders it among the
    /// generations.
    #[serde(default)]
    pub running: u64,
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// The history directory and the audit trail next to it.
pub struct History {
    dir: PathBuf,
    audit: PathBuf,
    /// How watched generations' windows ended.
    watch: PathBuf,
}

impl History {
    /// Opens (creating if needed) `<state_dir>/history`, root-only.
    pub fn open(state_dir: &Path) -> Result<History, HistoryError> {
        let dir = state_dir.join("history");
        let io = |source| HistoryError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(History {
            dir,
            audit: state_dir.join("audit.jsonl"),
            watch: state_dir.join("watch.jsonl"),
        })
    }

    /// Appends `attempt` to the audit trail (one line, fsynced).
    pub fn audit(&self, attempt: &Attempt) -> Result<(), HistoryError> {
        append(&self.audit, attempt)
    }

    /// Every audited attempt, oldest first. A line cut short by a crash is skipped.
    pub fn attempts(&self) -> Result<Vec<Attempt>, HistoryError> {
        read_lines(&self.audit)
    }

    /// Records how a generation's watch ended (one line, fsynced).
    pub fn record_watch(&self, verdict: &WatchVerdict) -> Result<(), HistoryError> {
        append(&self.watch, verdict)
    }

    /// Every watch verdict, oldest first.
    pub fn watch_verdicts(&self) -> Result<Vec<WatchVerdict>, HistoryError> {
        read_lines(&self.watch)
    }

    /// The newest generation that ran its watch window without a breach.
    pub fn last_good(&self) -> Result<Option<u64>, HistoryError> {
        Ok(self
            .watch_verdicts()?
            .iter()
            .filter(|v| v.outcome == WatchOutcome::Passed)
            .map(|v| v.generation)
            .max())
    }

    /// The newest record that `matches`, searching from the newest generation back.
    pub fn newest(
        &self,
        matches: impl Fn(&Record) -> bool,
    ) -> Result<Option<Record>, HistoryError> {
        for g in self.generations()?.into_iter().rev() {
            let r = self.get(g)?;
            if matches(&r) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{generation:010}.json"))
    }

    /// Generation numbers on disk, oldest first.
    pub fn generations(&self) -> Result<Vec<u64>, HistoryError> {
        let io = |source| HistoryError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            // Temporary files of an interrupted write end in ".tmp" and are ignored.
            if let Some(n) = name.strip_suffix(".json").and_then(|n| n.parse().ok()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    pub fn get(&self, generation: u64) -> Result<Record, HistoryError> {
        let path = self.path(generation);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HistoryError::Unknown { generation });
            }
            Err(source) => return Err(HistoryError::Io { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| HistoryError::Corrupt { path, source })
    }

    /// The newest committed record.
    pub fn latest(&self) -> Result<Option<Record>, HistoryError> {
        match self.generations()?.last() {
            Some(&g) => self.get(g).map(Some),
            None => Ok(None),
        }
    }

    /// Every record, oldest first.
    pub fn all(&self) -> Result<Vec<Record>, HistoryError> {
        self.generations()?
            .into_iter()
            .map(|g| self.get(g))
            .collect()
    }

    /// Commits `record` durably. Refuses to overwrite an existing generation.
    pub fn commit(&self, record: &Record) -> Result<(), HistoryError> {
        let path = self.path(record.generation);
        let tmp = path.with_extension("json.tmp");
        let io = |source| HistoryError::Io {
            path: path.clone(),
            source,
        };
        if path.exists() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "generation already committed",
            )));
        }
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| HistoryError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64) -> Record {
        let source = Source::Cli {
            command: "weight set web a 3".into(),
        };
        Record {
            time: 1_700_000_000 + generation,
            reason: Some("test".into()),
            force: generation.is_multiple_of(2),
            fingerprints: BTreeMap::from([("web".into(), "00ff".into())]),
            ..Record::fixture(generation, source, Config::default())
        }
    }

    #[test]
    fn commits_lists_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        assert_eq!(h.latest().unwrap(), None);
        for g in [1, 2, 10] {
            h.commit(&record(g)).unwrap();
        }
        assert_eq!(h.generations().unwrap(), vec![1, 2, 10]);
        assert_eq!(h.latest().unwrap(), Some(record(10)));
        assert_eq!(h.get(2).unwrap(), record(2));
        assert!(matches!(
            h.get(3),
            Err(HistoryError::Unknown { generation: 3 })
        ));
        assert!(h.commit(&record(2)).is_err(), "generations are immutable");
        assert_eq!(h.get(2).unwrap(), record(2));
    }

    #[test]
    fn interrupted_write_is_ignored_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        h.commit(&record(1)).unwrap();
        fs::write(dir.path().join("history/0000000002.json.tmp"), "{ half").unwrap();
        assert_eq!(h.latest().unwrap(), Some(record(1)));
        fs::write(dir.path().join("history/0000000003.json"), "{ half").unwrap();
        let err = h.latest().unwrap_err().to_string();
        assert!(
            err.contains("0000000003.json: not a generation record"),
            "{err}"
        );
    }
}
