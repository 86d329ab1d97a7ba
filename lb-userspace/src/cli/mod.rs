//! The `xlb` binary's verbs, one module each (or a tight group); `main.rs` keeps the clap
//! top level and the dispatch. Everything here is printing and talking to the daemon: the
//! work is in the library.

#[macro_use]
pub(crate) mod output;

pub(crate) mod change;
pub(crate) mod decap;
pub(crate) mod explain;
pub(crate) mod flows;
pub(crate) mod generate;
pub(crate) mod history;
pub(crate) mod host;
pub(crate) mod inspect;
pub(crate) mod pass;
pub(crate) mod rollout;
pub(crate) mod status;
pub(crate) mod teardown;
pub(crate) mod trace;
pub(crate) mod validate;

use std::path::Path;

use xlb::api::{self, Request, Response};

fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    api::call(socket, req)
}

fn ok(r: Response) -> Result<Response, String> {
    if r.ok { Ok(r) } else { Err(r.error) }
}
