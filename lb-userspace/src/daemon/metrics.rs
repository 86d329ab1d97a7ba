//! `GET /metrics` over HTTP/1.1 (hyper): a bounded number of connections, each with a
//! time limit on its request head and on its whole life, one request per connection.
//! The body is a fresh counter reading, or the sampler's last one while an apply holds
//! the controller, so a scrape never waits behind a long apply.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header::CONTENT_TYPE};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::Semaphore,
};

use super::{
    accept::{self, Burst},
    exposition,
    rates::Sample,
    state::{Shared, lock, stopped},
};

/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// The request head must be complete this long after the connection opens (or an idle or
/// trickling client is closed).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer, also one that reads its answer slowly.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a scrape waits for the controller before it answers from the last sample.
const FRESH_WAIT: Duration = Duration::from_millis(250);

/// Listens on `addr` (`host:port`) with a backlog as long as the connection bound, so
/// that a burst of connections waits there instead of being dropped (a dropped SYN costs
/// the client a second or more before it retries).
pub(crate) async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(a)
            .and_then(|()| socket.listen(MAX_CONNECTIONS as u32))
        {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

/// Serves `listener` until the daemon stops.
pub(crate) async fn serve(listener: TcpListener, d: Arc<Shared>) {
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop = d.subscribe();
    let mut failures = Burst::new("/metrics");
    loop {
        let accepted = tokio::select! {
            a = async {
                // Waiting for a slot before accepting leaves the excess in the backlog,
                // where it costs the daemon nothing.
                let permit = Arc::clone(&conns).acquire_owned().await;
                (permit, listener.accept().await)
            } => a,
            _ = stopped(&mut stop) => return,
        };
        let (Ok(permit), result) = accepted else {
            return;
        };
        let tcp = match result {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                accept::failed(&mut failures, &e).await;
                continue;
            }
        };
        failures.clear();
        let d = Arc::clone(&d);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let d = Arc::clone(&d);
                async move { Ok::<_, Infallible>(respond(&d, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            #[expect(
                clippy::let_underscore_must_use,
                reason = "a scrape that fails or times out only ends its own connection"
            )]
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

async fn respond(d: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "only GET /metrics is served\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET /metrics is served\n".into(),
        );
    }
    let fresh = match d.turn_within(FRESH_WAIT).await {
        Some(turn) => turn.run(|c| Sample::read(c)).await.ok().flatten(),
        None => None,
    };
    let sample = match fresh {
        Some(s) => Some(Arc::new(s)),
        None => lock(&d.sample).clone(),
    };
    match sample {
        Some(s) => {
            let mut daemon = d.exposition();
            daemon.flows = s.flow_table.map(|t| super::flows::FlowsView::new(t, d));
            text(
                StatusCode::OK,
                exposition::CONTENT_TYPE,
                exposition::render(s, daemon),
            )
        }
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "the counters could not be read yet; try again\n".into(),
        ),
    }
}
