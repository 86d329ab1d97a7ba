//! `xlb flows`: the flow table's entries, named. Only flows in changed slots have one;
//! every other flow follows its slot's owner (`xlb explain` shows which).

use std::path::Path;

use xlb::{
    api::Request,
    controller::{FlowsPage, MAX_FLOWS_PAGE},
};

use super::{call, ok, output::print_json};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only this VIP's flows (name or address).
    vip: Option<String>,
    /// Only flows pinned to this backend.
    #[arg(long)]
    backend: Option<String>,
    /// Entries to print (at most 10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=MAX_FLOWS_PAGE as u64))]
    limit: u64,
    /// Entries to skip first (the next page starts at offset + limit).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Print the page as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn flows(socket: &Path, args: Args) -> Result<u8, String> {
    let req = Request::Flows {
        vip: args.vip,
        backend: args.backend,
        limit: args.limit as usize,
        offset: args.offset as usize,
    };
    let r = ok(call(socket, &req)?)?;
    let page: FlowsPage = serde_json::from_value(r.data).map_err(|e| e.to_string())?;
    if args.json {
        print_json(&page)?;
        return Ok(0);
    }
    say!(
        "{:<46} {:<16} {:<20} {:>10} {:>8}",
        "CLIENT",
        "VIP",
        "BACKEND",
        "GENERATION",
        "IDLE"
    );
    for f in &page.flows {
        say!(
            "{:<46} {:<16} {:<20} {:>10} {:>7.1}s",
            f.client,
            f.vip,
            f.backend,
            f.generation,
            f.idle_s
        );
    }
    let shown = page.flows.len();
    say!(
        "{} of {} matching entries (offset {}); {} entries in the table (only flows in \
         slots a change moved have one)",
        shown,
        page.matched,
        page.offset,
        page.total
    );
    if page.offset + shown < page.matched {
        say!("next page: --offset {}", page.offset + shown);
    }
    Ok(0)
}
