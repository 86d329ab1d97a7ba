//! Probes against real sockets on 127.0.0.1 ephemeral ports.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    sync::mpsc,
};

use super::*;

fn check(kind: CheckKind, port: u16) -> HealthCheck {
    HealthCheck {
        kind,
        timeout_ms: 200,
        ..HealthCheck::tcp(port)
    }
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP server answering `/` with 200, `/down` with 503, anything else with 404,
/// one request per connection; each request head it read goes to the receiver.
async fn http_server() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let status = match head.split(' ').nth(1) {
                Some("/") => "200 OK",
                Some("/down") => "503 Service Unavailable",
                _ => "404 Not Found",
            };
            #[expect(
                clippy::let_underscore_must_use,
                reason = "the receiver is gone only once its test stopped reading request heads"
            )]
            let _ = tx.send(head);
            let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            #[expect(
                clippy::let_underscore_must_use,
                reason = "a prober that hung up has its verdict already"
            )]
            let _ = conn.write_all(response.as_bytes()).await;
        }
    });
    (addr, rx)
}

/// A UDP server that answers every datagram with `reply` (none: it never answers).
async fn udp_server(reply: Option<&'static str>) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = s.recv_from(&mut buf).await {
            if let Some(r) = reply {
                #[expect(
                    clippy::let_underscore_must_use,
                    reason = "a lost reply is for the prober to notice, as a failed probe"
                )]
                let _ = s.send_to(r.as_bytes(), from).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn tcp_passes_on_a_listener_and_fails_on_a_closed_port() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    assert!(probe(up, &check(CheckKind::Tcp, up.port())).await.is_ok());
    let port = closed_port().await;
    let down = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        probe(down, &check(CheckKind::Tcp, port)).await,
        Err("connect: connection refused".into())
    );
}

#[tokio::test]
async fn http_passes_on_a_status_in_range_only() {
    let (addr, mut heads) = http_server().await;
    let mut c = check(CheckKind::Http, addr.port());
    let r = probe(addr, &c).await;
    assert!(r.is_ok(), "{r:?}");
    let head = heads.recv().await.unwrap().to_lowercase();
    assert!(head.starts_with("get / http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", addr.port())),
        "{head}"
    );

    c.path = Some("/down".into());
    assert_eq!(
        probe(addr, &c).await,
        Err("HTTP 503 (expected 200-399)".into())
    );
    c.path = Some("/missing".into());
    assert_eq!(
        probe(addr, &c).await,
        Err("HTTP 404 (expected 200-399)".into())
    );
    c.status = Some("404".into());
    assert!(probe(addr, &c).await.is_ok());
    c.path = Some("/".into());
    assert_eq!(probe(addr, &c).await, Err("HTTP 200 (expected 404)".into()));
}

#[tokio::test]
async fn http_fails_on_a_closed_port_and_on_a_silent_server_within_its_timeout() {
    let port = closed_port().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        probe(addr, &check(CheckKind::Http, port)).await,
        Err("connect: connection refused".into())
    );
    // Accepts and never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let start = Instant::now();
    assert_eq!(
        probe(addr, &check(CheckKind::Http, addr.port())).await,
        Err("timed out after 200 ms".into())
    );
    assert!(start.elapsed() < Duration::from_millis(400));
    drop(l);
}

fn udp_check(port: u16, expect: Option<&str>) -> HealthCheck {
    HealthCheck {
        send: Some("ping".into()),
        expect: expect.map(str::to_string),
        ..check(CheckKind::Udp, port)
    }
}

#[tokio::test]
async fn udp_passes_on_a_reply_containing_expect() {
    let addr = udp_server(Some("b1 pong")).await;
    assert!(probe(addr, &udp_check(addr.port(), None)).await.is_ok());
    assert!(
        probe(addr, &udp_check(addr.port(), Some("pong")))
            .await
            .is_ok()
    );
    assert_eq!(
        probe(addr, &udp_check(addr.port(), Some("ready"))).await,
        Err("udp: reply does not contain \"ready\"".into())
    );
}

#[tokio::test]
async fn udp_fails_without_a_reply_and_on_port_unreachable() {
    let silent = udp_server(None).await;
    assert_eq!(
        probe(silent, &udp_check(silent.port(), None)).await,
        Err("udp: no reply within 200 ms".into())
    );
    // Nothing bound: the kernel answers with ICMP port unreachable (never rate-limited
    // on loopback).
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed = s.local_addr().unwrap();
    drop(s);
    assert_eq!(
        probe(closed, &udp_check(closed.port(), None)).await,
        Err("udp: ICMP port unreachable".into())
    );
}

#[tokio::test]
async fn a_round_reports_every_backend_with_its_outcome() {
    let (web, _heads) = http_server().await;
    // b's address is local but nothing listens there; VIP plain has no checks.
    let text = format!(
        r#"
vip = [
  {{ name = "web", address = "198.18.0.100", port = 80, protocol = "tcp",
     health = {{ kind = "http", port = {web} }},
     backend = [{{ name = "a", address = "127.0.0.1", weight = 1 }},
                {{ name = "b", address = "127.0.0.2", weight = 1 }}] }},
  {{ name = "tcp", address = "198.18.0.100", port = 81, protocol = "tcp",
     health = {{ port = {closed} }},
     backend = [{{ name = "c", address = "127.0.0.1", weight = 1 }}] }},
  {{ name = "plain", address = "198.18.0.100", port = 82, protocol = "tcp",
     backend = [{{ name = "d", address = "127.0.0.1", weight = 1 }}] }},
]
"#,
        web = web.port(),
        closed = closed_port().await
    );
    let vips = config::parse(&text, std::path::Path::new("t.toml"))
        .unwrap()
        .vips;
    let r = round(&vips).await;
    let got: Vec<(&str, &str, bool)> = r
        .probes
        .iter()
        .map(|((v, b), outcome)| (v.as_str(), b.as_str(), outcome.is_ok()))
        .collect();
    assert_eq!(
        got,
        [("tcp", "c", false), ("web", "a", true), ("web", "b", false)]
    );
    let slowest = r.probes.values().flatten().max().copied().unwrap();
    assert!(r.took >= slowest, "{:?} < {slowest:?}", r.took);
}
