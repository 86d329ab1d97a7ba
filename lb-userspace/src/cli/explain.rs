//! `xlb explain`: which backend a client's flow gets, and why.

use std::path::Path;

use xlb::{api::Request, controller::Explain};

use super::{call, ok, output::print_json};

pub(crate) fn explain(
    socket: &Path,
    vip: String,
    client: String,
    json: bool,
) -> Result<u8, String> {
    let r = ok(call(socket, &Request::Explain { vip, client })?)?;
    let e: Explain = serde_json::from_value(r.data).map_err(|e| e.to_string())?;
    if json {
        print_json(&e)?;
    } else if e.why == "changed-slot" {
        say!(
            "{} -> vip {}: backend {} (id {}): hash {:#010x} -> slot {} of generation {}'s table, \
             which changed owner; the flow has no entry{}",
            e.client,
            e.vip,
            e.backend,
            e.backend_id,
            e.hash.unwrap_or(0),
            e.slot.unwrap_or(0),
            e.generation,
            e.slot_previous
                .as_deref()
                .map(|p| format!(
                    " (for TCP: a new connection; other packets go to the previous owner, \
                     {p}, while it serves)"
                ))
                .unwrap_or_default()
        );
    } else if e.why == "flow-entry" {
        say!(
            "{} -> vip {}: backend {} (id {}), from its flow entry (written under generation \
             {}); its slot {} changed owner: now {}, before {}",
            e.client,
            e.vip,
            e.backend,
            e.backend_id,
            e.generation,
            e.slot.unwrap_or(0),
            e.slot_owner.as_deref().unwrap_or("?"),
            e.slot_previous.as_deref().unwrap_or("?")
        );
    } else {
        say!(
            "{} -> vip {}: backend {} (id {}): hash {:#010x} -> slot {} of generation {}'s table (stateless: no flow entry needed)",
            e.client,
            e.vip,
            e.backend,
            e.backend_id,
            e.hash.unwrap_or(0),
            e.slot.unwrap_or(0),
            e.generation
        );
    }
    Ok(0)
}
