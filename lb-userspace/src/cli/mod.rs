//! The `xlb` binary's verbs, one module each (or a tight group); `main.rs` keeps the clap
//! top level and the dispatch. Everything here is printing and talking to the daemon: the
//! work is in the library.

#[macro_use]
pub mod output;

pub mod change;
pub mod explain;
pub mod history;
pub mod rollout;
pub mod status;
pub mod teardown;
pub mod trace;
pub mod validate;

use std::path::Path;

use xlb::api::{self, Request, Response};

fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    api::call(socket, req)
}

fn ok(r: Response) -> Result<Response, String> {
    if r.ok { Ok(r) } else { Err(r.error) }
}
