//! `xlb trace`: the running program's per-packet decisions, one line each, as they happen.

use std::path::Path;

use xlb::api::{self, Request, TraceLine, TraceStarted};

use super::output::{ERROR, utc};

/// What to trace.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only packets to this VIP (by name).
    vip: Option<String>,
    /// Only packets given this backend (BACKEND within VIP, or VIP/BACKEND).
    #[arg(long)]
    backend: Option<String>,
    /// Only packets with this verdict (`xlb_packets_total`'s `reason` label); repeatable.
    /// Default: every verdict of traffic to a VIP address.
    #[arg(long = "reason", value_name = "REASON", value_parser = reason_names())]
    reasons: Vec<String>,
    /// Stop after this many records (default: until interrupted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// At most this many records per second on each CPU (1 to 5000; default 1000).
    #[arg(long)]
    rate: Option<u32>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub(crate) fn trace(socket: &Path, args: Args) -> Result<u8, String> {
    let req = Request::Trace {
        vip: args.vip,
        backend: args.backend,
        reasons: args.reasons,
        count: args.count,
        rate: args.rate,
    };
    let json = args.json;
    let mut refused = None;
    let mut ended_by_daemon = false;
    api::trace(
        socket,
        &req,
        |r| {
            if !r.ok {
                refused = Some(r.error.clone());
            } else if let Ok(s) = serde_json::from_value::<TraceStarted>(r.data.clone()) {
                eprintln!(
                    "tracing (generation {}; names follow every change), at most {} \
                     records/s per CPU; Ctrl-C stops",
                    s.generation, s.per_cpu_rate
                );
            }
        },
        |line| match line {
            TraceLine::Record { time_us, event } if json => {
                let mut v = serde_json::to_value(&event).unwrap_or_default();
                v["time_us"] = time_us.into();
                say!("{v}");
            }
            TraceLine::Record { time_us, event } => say!(
                "{}.{:06} {} {} {} -> {} {} {}",
                clock(time_us / 1_000_000),
                time_us % 1_000_000,
                event.vip.as_deref().unwrap_or("-"),
                event.protocol,
                event.client,
                event.destination,
                event.reason,
                match (&event.backend, &event.flow) {
                    (Some(b), Some(f)) => format!("{b} ({f} flow)"),
                    (Some(b), None) => b.clone(),
                    (None, _) => "-".into(),
                }
            ),
            TraceLine::Skipped { records, why } => {
                let what = if records == 1 { "record" } else { "records" };
                eprintln!("xlb trace: {records} {what} not shown: {why}");
            }
            TraceLine::Note { text } => eprintln!("xlb trace: {text}"),
            TraceLine::End { why, done } => {
                ended_by_daemon = !done;
                eprintln!("xlb trace: ended: {why}");
            }
        },
    )?;
    match refused {
        Some(e) => {
            eprintln!("xlb: {e}");
            Ok(ERROR)
        }
        None if ended_by_daemon => Ok(ERROR),
        None => Ok(0),
    }
}

fn reason_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(lb_common::Reason::ALL.map(|r| r.name()))
}

/// `HH:MM:SS` in UTC.
fn clock(secs: u64) -> String {
    let full = utc(secs);
    full.split_once(' ')
        .map_or(full.clone(), |(_, time)| time.to_string())
}
