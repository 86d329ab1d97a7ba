//! The API server on the Unix socket: creates the socket with its permissions, accepts
//! within a bound on connections, reads one request line within a size cap, a time limit
//! and a daemon-wide memory budget, and writes one answer line (a trace streams more:
//! `trace::serve`).

use std::{
    ffi::CString,
    io,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, warn};

use super::{
    accept::{self, Burst},
    handle,
    state::{Shared, stopped},
    sys,
};
use crate::api::{MAX_REQUEST_LINE, Request, Response};

/// Connections served at once. An idle connection costs a task and a socket, no buffer,
/// so this is generous: a few thousand stuck clients must not lock operators out. The
/// daemon raises its open-files limit at start so that this is the bound that applies.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// The whole request line must arrive within this; a client that trickles it (one byte
/// a second) is cut off here. The CLI writes its line at once.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An answer the client does not read within this is dropped.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of request lines that all connections together may hold while reading, past
/// each connection's first `FIRST_READ`: four requests at the cap. A reader waits for
/// budget (within its time limit) rather than growing memory, so many clients holding
/// long unfinished lines cannot exhaust memory; and since the first `FIRST_READ` bytes
/// need no budget, they cannot hold up the short requests (status, weight set) either.
const BUFFER_BUDGET: usize = 4 * (MAX_REQUEST_LINE + 1);
/// The first read buffer; it doubles as the line grows. Every request but `apply` fits.
const FIRST_READ: usize = 4096;

/// Creates the socket: parent directory 0755, socket 0600, or 0660 with `group`.
pub(crate) fn listen(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another xlb daemon is running (stop it first)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // Created under a tight umask, so the socket is never world-accessible, not even
    // between bind and chmod.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    if let Some(group) = group {
        let gid = sys::group_id(group)
            .with_context(|| format!("daemon.socket_group: no group named {group:?}"))?;
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid C path; uid -1 leaves the owner unchanged.
        if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } != 0 {
            bail!("chown {}: {}", path.display(), io::Error::last_os_error());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

/// Removes the socket file once the daemon no longer answers on it.
pub(crate) fn remove(path: &Path) {
    #[expect(
        clippy::let_underscore_must_use,
        reason = "a socket file already gone is what this wants; one that cannot be removed \
                  fails the next daemon's `listen`, which says why"
    )]
    let _ = std::fs::remove_file(path);
}

/// Serves `listener` until the daemon stops. `conns` bounds the connections; stopping
/// waits for all of its permits, so each connection holds one until its answer is out.
pub(crate) async fn serve(listener: UnixListener, d: Arc<Shared>, conns: Arc<Semaphore>) {
    let budget = Arc::new(Semaphore::new(BUFFER_BUDGET));
    let mut stop = d.subscribe();
    let mut failures = Burst::new("API socket");
    let mut refusals = Burst::new("API socket");
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                accept::failed(&mut failures, &e).await;
                continue;
            }
        };
        failures.clear();
        let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
            refusals.hit(format_args!(
                "{MAX_CONNECTIONS} connections open, the limit: refusing new ones"
            ));
            // The socket buffer of a new connection is empty, so this short line fits
            // without waiting.
            #[expect(
                clippy::let_underscore_must_use,
                reason = "a client that cannot take the refusal line is refused all the same"
            )]
            let _ = stream.try_write(&line(&Response::error(format!(
                "the daemon has {MAX_CONNECTIONS} connections open, its limit; try again"
            ))));
            continue;
        };
        refusals.clear();
        tokio::spawn(connection(
            stream,
            Arc::clone(&d),
            Arc::clone(&budget),
            permit,
        ));
    }
}

/// `value` as one JSON line.
pub(super) fn line(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_default();
    out.push(b'\n');
    out
}

async fn reply(stream: &mut UnixStream, r: &Response) {
    #[expect(
        clippy::let_underscore_must_use,
        reason = "an answer the client does not read within WRITE_TIMEOUT is dropped"
    )]
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line(r))).await;
}

async fn connection(
    mut stream: UnixStream,
    d: Arc<Shared>,
    budget: Arc<Semaphore>,
    _permit: OwnedSemaphorePermit,
) {
    let uid = sys::peer_uid(stream.as_raw_fd());
    let mut stop = d.subscribe();
    let read = tokio::select! {
        r = tokio::time::timeout(REQUEST_TIMEOUT, read_line(&stream, &budget)) => r,
        _ = stopped(&mut stop) => return,
    };
    let parsed = match read {
        Ok(Ok(Some((line, _held)))) => serde_json::from_slice::<Request>(&line),
        Ok(Ok(None)) => return,
        Ok(Err(ReadError::TooLong)) => {
            warn!(
                uid,
                "request line over the {MAX_REQUEST_LINE}-byte limit: refused, connection closed"
            );
            return reply(
                &mut stream,
                &Response::error(format!(
                    "the request line is longer than the daemon's limit of {MAX_REQUEST_LINE} \
                     bytes ({} MiB); nothing was read past it",
                    MAX_REQUEST_LINE >> 20
                )),
            )
            .await;
        }
        Ok(Err(ReadError::Io(e))) => return debug!(uid, "reading a request: {e}"),
        Err(_) => {
            debug!(
                uid,
                "no complete request line within {REQUEST_TIMEOUT:?}: closed"
            );
            return reply(
                &mut stream,
                &Response::error(format!(
                    "no complete request line within {} s; closing",
                    REQUEST_TIMEOUT.as_secs()
                )),
            )
            .await;
        }
    };
    // The line and its budget are released here: the parsed request is all that is kept.
    let response = match parsed {
        Ok(req @ Request::Trace { .. }) => {
            let user = tokio::task::spawn_blocking(move || sys::user(uid))
                .await
                .unwrap_or_else(|_| "unknown".into());
            return super::trace::serve(stream, d, req, user).await;
        }
        Ok(req) => {
            // NSS may be slow (LDAP): the lookup runs off the runtime's threads.
            let user = tokio::task::spawn_blocking(move || sys::user(uid))
                .await
                .unwrap_or_else(|_| "unknown".into());
            handle::handle(&d, req, user, stream.as_raw_fd()).await
        }
        Err(e) => {
            debug!(uid, "bad request: {e}");
            Response::error(format!("bad request: {e}"))
        }
    };
    reply(&mut stream, &response).await;
}

enum ReadError {
    TooLong,
    Io(io::Error),
}

/// Reads up to the first newline (or the end of the stream): the line without it, and
/// the budget its buffer holds; `None` if the client sent nothing. Bytes after the newline are ignored (one request
/// per connection). Nothing past `MAX_REQUEST_LINE + 1` bytes is ever read.
async fn read_line(
    stream: &UnixStream,
    budget: &Arc<Semaphore>,
) -> Result<Option<(Vec<u8>, Option<OwnedSemaphorePermit>)>, ReadError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        // Nothing is allocated for a connection until it has something to say.
        stream.readable().await.map_err(ReadError::Io)?;
        if buf.capacity() == 0 {
            buf.reserve_exact(FIRST_READ);
        } else if buf.len() == buf.capacity() {
            let want = (buf.capacity() * 2).min(MAX_REQUEST_LINE + 1);
            let more = want - buf.capacity();
            // `more` never exceeds the budget, so this only waits for others to finish.
            let permit = Arc::clone(budget)
                .acquire_many_owned(more as u32)
                .await
                .map_err(|e| ReadError::Io(io::Error::other(e)))?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            buf.reserve_exact(more);
        }
        let start = buf.len();
        match stream.try_read_buf(&mut buf) {
            // A client that shut down its writing half after an unterminated line still
            // gets its answer.
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Ok(Some((buf, held))),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(ReadError::Io(e)),
        }
        if let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
            buf.truncate(start + i);
            return Ok(Some((buf, held)));
        }
        if buf.len() > MAX_REQUEST_LINE {
            return Err(ReadError::TooLong);
        }
    }
}
