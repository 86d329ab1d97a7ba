//! The `structure` rule's part for `[vip.health]`: settings a probe could not act on, or
//! would act on in a way nobody meant (a key of another kind's check is ignored by the
//! probe, so it is refused rather than silently dropped).

use crate::config::{CheckKind, HealthCheck};

/// Longest `slow_start_s`: an hour.
const MAX_SLOW_START_S: u64 = 3600;

/// What is wrong with `h`, as (message, hint) pairs; empty when nothing is.
pub(super) fn problems(h: &HealthCheck) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if h.port == 0 {
        out.push(("health check port 0".into(), "set health.port"));
    }
    if h.interval_ms == 0 || h.timeout_ms == 0 {
        out.push((
            format!(
                "health interval_ms = {}, timeout_ms = {}: both must be above 0",
                h.interval_ms, h.timeout_ms
            ),
            "leave them out (1000 and 500) or set them in milliseconds above 0",
        ));
    }
    if h.rise == 0 || h.fall == 0 {
        out.push((
            format!(
                "health rise = {}, fall = {}: both must be at least 1",
                h.rise, h.fall
            ),
            "leave them out (2 and 3) or count probes in a row from 1",
        ));
    }
    if let Some(s) = h.slow_start_s
        && !(1..=MAX_SLOW_START_S).contains(&s)
    {
        out.push((
            format!("health slow_start_s = {s} is outside 1..={MAX_SLOW_START_S}"),
            "leave it out for no slow start, or give seconds up to an hour",
        ));
    }
    misplaced_keys(h, &mut out);
    match h.kind {
        CheckKind::Tcp => {}
        CheckKind::Http => http(h, &mut out),
        CheckKind::Udp => {
            if h.send.as_deref().is_none_or(str::is_empty) {
                out.push((
                    "health kind = \"udp\" has no send: a probe needs a datagram to send".into(),
                    "set health.send to a request the service answers, like \"ping\"",
                ));
            }
        }
    }
    out
}

/// Keys set on a check whose kind does not read them.
fn misplaced_keys(h: &HealthCheck, out: &mut Vec<(String, &'static str)>) {
    let keys = [
        ("path", CheckKind::Http, h.path.is_some()),
        ("status", CheckKind::Http, h.status.is_some()),
        ("send", CheckKind::Udp, h.send.is_some()),
        ("expect", CheckKind::Udp, h.expect.is_some()),
    ];
    for (key, kind, set) in keys {
        if set && h.kind != kind {
            out.push((
                format!(
                    "health {key} is for {} checks, and this one is {}",
                    kind.as_str(),
                    h.kind.as_str()
                ),
                "remove the key, or set health.kind to the check it belongs to",
            ));
        }
    }
}

fn http(h: &HealthCheck, out: &mut Vec<(String, &'static str)>) {
    if let Some(path) = &h.path
        && (!path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        out.push((
            format!("health path {path:?} is not a request path"),
            "write a path that starts with / and has no spaces or control characters, \
             like \"/healthz\"",
        ));
    }
    if h.statuses().is_none() {
        out.push((
            format!(
                "health status {:?} is not a code or a range of codes in 100-599",
                h.status.as_deref().unwrap_or_default()
            ),
            "write one code like \"204\" or a range like \"200-399\"",
        ));
    }
}
