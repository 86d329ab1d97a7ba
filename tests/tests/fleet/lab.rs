//! What the fleet tests share: the VIPs, traffic from both clients at once, long-lived
//! connections, and what a host's daemon says about its tables.

use std::{collections::BTreeMap, net::IpAddr, thread};

use xlb_lab::{
    clients::{Echo, http_many},
    daemon::{Check, Daemon, VipSpec},
    fleet::{Fleet, VIP4, VIP4_ALT, vip4},
    servers::ECHO_PORT,
    topology::enter,
};

/// The VIP the tests send to: weights 2, 3, 4 (table shares 22%, 33%, 44%).
pub(crate) fn web() -> VipSpec {
    VipSpec::tcp("web", VIP4, 80, &[2, 3, 4])
}

/// The echo service on the same address (long-lived connections).
pub(crate) fn echo() -> VipSpec {
    VipSpec::tcp("echo", VIP4, ECHO_PORT, &[2, 3, 4])
}

/// A second address, for a VIP that fails on one host only: checked on the echo port.
pub(crate) fn alt() -> VipSpec {
    VipSpec {
        health: Some(Check::tcp(ECHO_PORT)),
        ..VipSpec::tcp("alt", VIP4_ALT, 80, &[1, 1, 1])
    }
}

/// Runs `f` on a thread in every client namespace at once; their results in client
/// order.
fn on_every_client<T: Send + 'static>(
    fleet: &Fleet,
    f: impl Fn() -> T + Clone + Send + 'static,
) -> Vec<T> {
    let threads: Vec<_> = fleet
        .clients
        .iter()
        .map(|c| {
            let (ns, f) = (c.name.clone(), f.clone());
            thread::spawn(move || {
                enter(&ns);
                f()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

/// `n` short HTTP connections from every client at once: connections per backend.
pub(crate) fn http_from_all(fleet: &Fleet, vip: IpAddr, n: u32) -> BTreeMap<String, u32> {
    let mut total = BTreeMap::new();
    for counts in on_every_client(fleet, move || http_many(vip, n)) {
        for (b, n) in counts {
            *total.entry(b).or_insert(0) += n;
        }
    }
    total
}

/// `per_client` long-lived echo connections from each client, each answered once.
pub(crate) fn open_echoes(fleet: &Fleet, per_client: usize) -> Vec<Echo> {
    let open = move || {
        (0..per_client)
            .map(|i| {
                let mut e =
                    Echo::open(vip4()).unwrap_or_else(|err| panic!("echo connection {i}: {err}"));
                e.ping("hello")
                    .unwrap_or_else(|err| panic!("echo connection {i}: {err}"));
                e
            })
            .collect::<Vec<_>>()
    };
    on_every_client(fleet, open).into_iter().flatten().collect()
}

/// The fingerprint of each VIP's table in `daemon`'s running generation.
pub(crate) fn fingerprints(daemon: &Daemon) -> serde_json::Value {
    daemon.history().last().expect("a generation")["fingerprints"].clone()
}

/// Which host carries each connection (the first, if several).
pub(crate) fn hosts_of(fleet: &Fleet, vip: &str, conns: &mut [Echo]) -> Vec<usize> {
    conns
        .iter_mut()
        .map(|e| {
            let hosts = fleet
                .carriers(vip, e, "whose")
                .unwrap_or_else(|err| panic!("{} broke: {err}", e.local));
            *hosts
                .first()
                .unwrap_or_else(|| panic!("no host carries {}", e.local))
        })
        .collect()
}
