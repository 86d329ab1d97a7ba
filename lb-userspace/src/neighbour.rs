//! Backend MACs from the kernel's neighbour table, for backends configured with
//! `mac = "neighbour"`. A missing entry is solicited by sending one UDP datagram to the
//! backend's discard port (the kernel resolves the address to send it), then the table is
//! polled for a bounded time. Reads go through `ip -j neigh`, which iproute2 provides.
//!
//! The load balancer's own stack rarely talks to its backends (XDP forwards without it),
//! so the kernel would not notice a backend's new MAC for a long time (a `REACHABLE`
//! entry is trusted for 15-45 s, and nothing makes a `STALE` one re-validate). The
//! daemon's refresher therefore asks the kernel to re-validate every settled entry each
//! second (`nud probe`: a unicast ARP or neighbour solicitation to the MAC it knows) and
//! solicits failed or missing ones (a broadcast request follows). A backend whose MAC
//! changed stops answering at the old one, its entry fails after the kernel's unicast
//! probes (3 x 1 s by default) and the next solicitation learns the new MAC: about five
//! seconds in all.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use crate::guard::parse_mac;

/// The MACs of `addrs` on `iface`: those the table knows, then, after one solicitation
/// each, those that appear within `wait`. A failing `ip` counts as nothing found (the
/// backends stay unresolved and the refresher tries again).
pub fn resolve(iface: &str, addrs: &[IpAddr], wait: Duration) -> BTreeMap<IpAddr, [u8; 6]> {
    let mut found = BTreeMap::new();
    if addrs.is_empty() {
        return found;
    }
    let deadline = Instant::now() + wait;
    let mut solicited = false;
    loop {
        for (a, e) in entries(iface).unwrap_or_default() {
            if let (true, Some(mac)) = (addrs.contains(&a), e.mac) {
                found.insert(a, mac);
            }
        }
        if found.len() == addrs.len() || Instant::now() >= deadline {
            return found;
        }
        if !solicited {
            // Port 9 is discard; the datagram only makes the kernel resolve the neighbour.
            addrs
                .iter()
                .filter(|a| !found.contains_key(a))
                .for_each(|a| solicit(*a));
            solicited = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One neighbour entry as `ip -j neigh` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The link-layer address, unless the entry failed or is still incomplete.
    pub mac: Option<[u8; 6]>,
    pub state: Nud,
}

/// Where an entry is in the kernel's neighbour state machine, as the refresher sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nud {
    /// `REACHABLE` or `STALE`: has a MAC that may need re-validating.
    Settled,
    /// `PERMANENT` or `NOARP`: configured by hand, never probed.
    Static,
    /// `DELAY`, `PROBE` or `INCOMPLETE`: the kernel is resolving it now.
    Probing,
    /// `FAILED`: nobody answered.
    Failed,
}

/// Every entry on `iface`.
pub fn entries(iface: &str) -> Result<Vec<(IpAddr, Entry)>, String> {
    let out = Command::new("ip")
        .args(["-j", "neigh", "show", "dev", iface])
        .output()
        .map_err(|e| format!("running `ip neigh`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip neigh show dev {iface}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("reading `ip -j neigh` output: {e}"))?;
    let has = |e: &serde_json::Value, what: &[&str]| {
        e["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| what.iter().any(|w| x == w)))
    };
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let addr: IpAddr = e["dst"].as_str()?.parse().ok()?;
            let state = if has(e, &["FAILED"]) {
                Nud::Failed
            } else if has(e, &["DELAY", "PROBE", "INCOMPLETE"]) {
                Nud::Probing
            } else if has(e, &["PERMANENT", "NOARP"]) {
                Nud::Static
            } else {
                Nud::Settled
            };
            let mac = e["lladdr"]
                .as_str()
                .and_then(parse_mac)
                .filter(|_| state != Nud::Failed);
            Some((addr, Entry { mac, state }))
        })
        .collect())
}

/// Asks the kernel to re-validate the settled entries of `addrs` on `iface` now
/// (`nud probe`: unicast probes to the MAC it knows; if nobody answers there, the entry
/// fails and the next solicitation broadcasts). One `ip -batch` for all of them.
pub fn revalidate(iface: &str, addrs: &[IpAddr]) -> Result<(), String> {
    use std::io::Write as _;
    if addrs.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running `ip -batch`: {e}"))?;
    let mut script = String::new();
    for a in addrs {
        script += &format!("neigh change {a} dev {iface} nud probe\n");
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("writing to `ip -batch`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`ip -batch`: {e}"))?;
    // An entry that went away between the snapshot and now is not an error worth more
    // than the log line of the next snapshot.
    if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("No such file") {
        return Err(format!(
            "`ip neigh change ... nud probe`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The next hop towards `addr` and the interface it is on, as the kernel's routing
/// table says (`ip -j route get`): the gateway, or `addr` itself when it is on-link.
pub fn next_hop(addr: IpAddr) -> Result<(IpAddr, String), String> {
    let out = Command::new("ip")
        .args(["-j", "route", "get", &addr.to_string()])
        .output()
        .map_err(|e| format!("running `ip route get`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip route get {addr}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_route(&out.stdout)
        .ok_or_else(|| format!("`ip -j route get {addr}`: no route in the output"))
}

/// The gateway (or destination) and device of `ip -j route get` output.
fn parse_route(json: &[u8]) -> Option<(IpAddr, String)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let r = v.as_array()?.first()?;
    let hop = r["gateway"].as_str().or(r["dst"].as_str())?.parse().ok()?;
    Some((hop, r["dev"].as_str()?.to_string()))
}

/// Makes the kernel (re-)resolve `addr`: one datagram to its discard port.
pub fn solicit(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        #[expect(
            clippy::let_underscore_must_use,
            reason = "the datagram only makes the kernel resolve the neighbour; the neighbour table shows the result"
        )]
        let _ = sock.send_to(b"xlb", (addr, 9));
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn next_hop_is_the_gateway_or_the_destination() {
        let via = br#"[{"dst":"198.18.3.11","gateway":"198.18.2.1","dev":"eth0","prefsrc":"198.18.2.2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route(via),
            Some(("198.18.2.1".parse().unwrap(), "eth0".into()))
        );
        let on_link = br#"[{"dst":"2001:db8::11","dev":"eth0","prefsrc":"2001:db8::2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route(on_link),
            Some(("2001:db8::11".parse().unwrap(), "eth0".into()))
        );
        assert_eq!(parse_route(b"[]"), None);
    }
}
