//! The file as text: strict parsing that names the file, line and key of an error and
//! keeps the line of every VIP, backend and global key, and the export back to TOML.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use toml::Spanned;

use super::{
    BackendSpec, Config, ConfigError, Daemon, Forwarding, HealthCheck, Ipip, Policy,
    PolicyOverride, Protocol, Rollout, Vip,
};

/// `config` as a config file: what `xlb export` prints. `vip = []` stands for an
/// intentionally empty VIP list.
pub fn to_toml(config: &Config) -> Result<String, toml::ser::Error> {
    let mut c = config.without_lines();
    c.allow_empty = false;
    let text = toml::to_string(&c)?;
    // A top-level key must come before the first table header.
    Ok(if config.vips.is_empty() {
        format!("vip = []\n{text}")
    } else {
        text
    })
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses `text`; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(&e, text, path, ""))?;
    let spanned: Spanned<SpannedConfig> = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        toml_error(e.inner(), text, path, &key)
    })?;
    let mut config = spanned.into_inner().into_config(text);
    config.key_lines = key_lines(text);
    Ok(config)
}

/// Line of every top-level key and of every key of the `[daemon]` (`[daemon.announce]`
/// included) and `[guardrails]` tables. The text already
/// parsed, so a second parse cannot fail; if it did, reports just go without lines.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return out;
    };
    for (table, value) in doc.get_ref() {
        let table = table.get_ref().as_ref();
        out.insert(table.to_string(), line_of(text, value.span().start));
        if !matches!(table, "daemon" | "guardrails" | "rollout" | "ipip") {
            continue;
        }
        for (key, inner) in value.get_ref().as_table().into_iter().flatten() {
            let line = line_of(text, key.span().start);
            let key = format!("{table}.{}", key.get_ref());
            // `[daemon.announce]` is a table of its own inside `[daemon]`.
            for (sub, _) in inner.get_ref().as_table().into_iter().flatten() {
                out.insert(
                    format!("{key}.{}", sub.get_ref()),
                    line_of(text, sub.span().start),
                );
            }
            out.insert(key, line);
        }
    }
    out
}

fn toml_error(e: &toml::de::Error, text: &str, path: &Path, key: &str) -> ConfigError {
    let line = e.span().map_or(1, |s| line_of(text, s.start));
    // Spans are read through a private serde field; it is not part of the user's path.
    let key = key
        .replace("$__serde_spanned_private_value.", "")
        .replace(".$__serde_spanned_private_value", "");
    let key = if key == "." { "" } else { key.as_str() };
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        key: if key.is_empty() {
            "(top level)".to_string()
        } else {
            key.to_string()
        },
        message: e.message().trim().to_string(),
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// The file as serde reads it: the same shape as `Config`, with spans on VIPs and
// backends so that later reports can name their lines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpannedConfig {
    #[serde(default)]
    daemon: Daemon,
    #[serde(default)]
    guardrails: Policy,
    #[serde(default)]
    rollout: Rollout,
    #[serde(default)]
    ipip: Ipip,
    #[serde(default)]
    vip: Option<Vec<Spanned<SpannedVip>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpannedVip {
    name: String,
    address: String,
    port: u16,
    protocol: Protocol,
    #[serde(default = "Vip::default_forwarding")]
    forwarding: Forwarding,
    #[serde(default = "super::yes")]
    icmp_echo: bool,
    #[serde(default)]
    guardrails: PolicyOverride,
    #[serde(default)]
    health: Option<HealthCheck>,
    #[serde(default)]
    backend: Vec<Spanned<BackendSpec>>,
}

impl SpannedConfig {
    fn into_config(self, text: &str) -> Config {
        Config {
            daemon: self.daemon,
            guardrails: self.guardrails,
            rollout: self.rollout,
            ipip: self.ipip,
            allow_empty: self.vip.as_ref().is_some_and(Vec::is_empty),
            key_lines: BTreeMap::new(),
            vips: self
                .vip
                .into_iter()
                .flatten()
                .map(|v| {
                    let line = line_of(text, v.span().start);
                    let v = v.into_inner();
                    Vip {
                        name: v.name,
                        address: v.address,
                        port: v.port,
                        protocol: v.protocol,
                        forwarding: v.forwarding,
                        icmp_echo: v.icmp_echo,
                        guardrails: v.guardrails,
                        health: v.health,
                        backends: v
                            .backend
                            .into_iter()
                            .map(|b| {
                                let line = line_of(text, b.span().start);
                                BackendSpec {
                                    line: Some(line),
                                    ..b.into_inner()
                                }
                            })
                            .collect(),
                        line: Some(line),
                    }
                })
                .collect(),
        }
    }
}
