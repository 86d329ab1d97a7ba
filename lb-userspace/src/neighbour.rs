//! Backend MACs from the kernel's neighbour table, for backends configured with
//! `mac = "neighbour"`. A missing entry is solicited by sending one UDP datagram to the
//! backend's discard port (the kernel resolves the address to send it), then the table is
//! polled for a bounded time. Reads go through `ip -j neigh`, which iproute2 provides.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use crate::guard::parse_mac;

/// Looks `addr` up on `iface`; solicits and waits up to `wait` if it is not known.
pub fn resolve(iface: &str, addr: IpAddr, wait: Duration) -> Result<[u8; 6], String> {
    if let Some(mac) = lookup(iface, addr)? {
        return Ok(mac);
    }
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|e| format!("{e}"))?
    } else {
        "[::]:0".parse().map_err(|e| format!("{e}"))?
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("soliciting {addr}: {e}"))?;
    // Port 9 is discard; the datagram only makes the kernel resolve the neighbour.
    let _ = sock.send_to(b"xlb", (addr, 9));
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = lookup(iface, addr)? {
            return Ok(mac);
        }
    }
    Err(format!(
        "no neighbour entry for {addr} on {iface} after {} ms; check that the backend is up \
         on the same L2 segment, or configure its mac explicitly",
        wait.as_millis()
    ))
}

fn lookup(iface: &str, addr: IpAddr) -> Result<Option<[u8; 6]>, String> {
    let out = Command::new("ip")
        .args(["-j", "neigh", "show", "to", &addr.to_string(), "dev", iface])
        .output()
        .map_err(|e| format!("running `ip neigh`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip neigh show to {addr} dev {iface}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("reading `ip -j neigh` output: {e}"))?;
    Ok(entries.as_array().and_then(|a| {
        a.iter()
            .filter(|e| {
                let state = e["state"].as_array();
                !state.is_some_and(|s| s.iter().any(|x| x == "FAILED" || x == "INCOMPLETE"))
            })
            .find_map(|e| e["lladdr"].as_str().and_then(parse_mac))
    }))
}
