//! The daemon's own config file, at start and on SIGHUP, under the one-source-of-truth
//! rules of `crate::reload`: applied only when it differs from what was last applied
//! from it, never undoing changes made since by other means, always through the
//! guardrails. A refusal is logged with what it would undo and kept in the audit trail.

use std::path::Path;

use tracing::{info, warn};

use super::handle::rule_ids;
use crate::{
    config,
    controller::{self, ApplyError, Controller},
    history::{Attempt, Source},
    reload::{self, FileCheck, Trigger},
};

/// Why the file was not applied.
pub(crate) enum FileError {
    /// The guardrails rejected it.
    Rejected,
    /// Applying it would undo changes made since it was last applied.
    Refused,
    Failed(ApplyError),
}

/// Applies the daemon's config file `config`, read from `path`, for `trigger`.
pub(crate) fn apply(
    controller: &mut Controller,
    config: config::Config,
    path: &Path,
    trigger: Trigger,
    user: String,
) -> Result<(), FileError> {
    let what = match trigger {
        Trigger::Startup => "startup",
        Trigger::Reload => "reload",
    };
    let last = controller
        .history()
        .newest(|r| reload::from_file(r, path))
        .map_err(|e| {
            warn!(user, "{what} failed: reading the history: {e}");
            FileError::Failed(e.into())
        })?;
    let source = match trigger {
        Trigger::Startup => Source::Startup {
            file: path.to_path_buf(),
        },
        Trigger::Reload => Source::Reload {
            file: path.to_path_buf(),
        },
    };
    let file = path.display();
    match reload::check(trigger, &config, controller.current(), last.as_ref()) {
        FileCheck::Unchanged { since } => {
            info!(
                user,
                "{what}: {file} is unchanged since generation {since} applied it; running \
                 generation {}",
                controller.current().map_or(0, |r| r.generation)
            );
            Ok(())
        }
        FileCheck::WouldUndo(items) => {
            let error = format!(
                "{what} refused, nothing changed: {file} differs from the running generation \
                 in {} place(s) changed since the file was last applied, and applying it \
                 would undo them; apply it anyway with `xlb apply {file}`, or bring the file \
                 in line with `xlb export`",
                items.len()
            );
            warn!(user, "{error}");
            items.iter().for_each(|i| warn!(user, "  would undo {i}"));
            controller.audit(&Attempt {
                time: crate::history::now(),
                source,
                user,
                force: false,
                reason: None,
                outcome: "refused".into(),
                error: format!("{error}: {}", items.join("; ")),
                violations: Vec::new(),
                running: controller.current().map_or(0, |r| r.generation),
            });
            Err(FileError::Refused)
        }
        FileCheck::Apply => {
            let req = controller::Request {
                config,
                source,
                user: user.clone(),
                force: false,
                reason: None,
                dry_run: false,
            };
            match controller.apply(req) {
                Ok(o) => {
                    super::handle::warn_unresolved(&o.plan);
                    match o.generation {
                        Some(g) => info!(
                            user,
                            force = false,
                            "{what}: applied {file} as generation {g}"
                        ),
                        None => info!(user, force = false, "{what}: {file} is already applied"),
                    }
                    Ok(())
                }
                Err(ApplyError::Rejected(violations, plan)) => {
                    super::handle::warn_unresolved(&plan);
                    warn!(
                        user,
                        force = false,
                        "{what}: {file} rejected by the guardrails, nothing changed: rejected by {}",
                        rule_ids(&violations)
                    );
                    violations
                        .iter()
                        .for_each(|v| warn!("{}", v.located_line(path)));
                    Err(FileError::Rejected)
                }
                Err(e) => {
                    warn!(user, force = false, "{what} failed: {e}");
                    Err(FileError::Failed(e))
                }
            }
        }
    }
}
