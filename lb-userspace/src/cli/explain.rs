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
        return Ok(0);
    }
    let head = format!(
        "{} -> vip {}: backend {} (id {})",
        e.client, e.vip, e.backend, e.backend_id
    );
    let slot = format!(
        "hash {:#010x} -> slot {} of generation {}'s table",
        e.hash.unwrap_or(0),
        e.slot.unwrap_or(0),
        e.generation
    );
    match e.why.as_str() {
        "changed-slot" => say!(
            "{head}: {slot}, which changed owner; the flow has no entry{}",
            e.slot_previous
                .as_deref()
                .map(|p| format!(
                    " (for TCP: a new connection; other packets go to the previous owner, \
                     {p}, while it serves)"
                ))
                .unwrap_or_default()
        ),
        "flow-entry" => {
            let (now, before) = (
                e.slot_owner.as_deref().unwrap_or("?"),
                e.slot_previous.as_deref().unwrap_or("?"),
            );
            let slot = e.slot.unwrap_or(0);
            let history = if now == before {
                format!("its slot {slot} changed owner and is back at {now}")
            } else {
                format!("its slot {slot} changed owner: now {now}, before {before}")
            };
            say!(
                "{head}, from its flow entry (written under generation {}); {history}",
                e.generation
            );
        }
        _ => say!("{head}: {slot} (stateless: no flow entry needed)"),
    }
    Ok(0)
}
