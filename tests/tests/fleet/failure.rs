//! A host dies under long-lived connections: which host each connection used, the kill,
//! the router's withdrawal, and what each connection saw afterwards.

use std::time::{Duration, Instant};

use xlb_lab::{
    clients::Echo,
    fleet::{Fleet, VIP4},
};

use crate::lab::hosts_of;

/// What one host failure did.
pub(crate) struct Failover {
    pub victim: usize,
    /// From the link going down to the router's route without the host.
    pub detection: Duration,
    /// Connections whose flow was on the victim.
    pub on_victim: usize,
    /// Connections on a surviving host that the router moved to the other survivor.
    pub rehashed: usize,
    /// Per connection: the host it used before, whether it moved to another host, and
    /// the error of its first exchange after the failure.
    pub conns: Vec<(usize, bool, Option<String>)>,
}

/// Kills the host most connections use (link down, then xlb and BIRD), waits for the
/// router to withdraw it, then talks once on every connection.
pub(crate) fn fail_busiest_host(fleet: &mut Fleet, conns: &mut [Echo]) -> Failover {
    let before = hosts_of(fleet, "echo", conns);
    let n = fleet.hosts.len();
    let victim = (0..n)
        .max_by_key(|h| before.iter().filter(|b| *b == h).count())
        .expect("hosts");
    let on_victim = before.iter().filter(|&&h| h == victim).count();
    let survivors: Vec<usize> = (0..n).filter(|&h| h != victim).collect();
    let down = fleet.kill_host(victim);
    fleet.wait_next_hops(VIP4, &survivors, Duration::from_secs(10));
    let detection = down.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut rehashed = 0;
    for (e, &old) in conns.iter_mut().zip(&before) {
        assert!(Instant::now() < deadline, "pings over their time bound");
        let result = e.ping("after the failure").err().map(|err| err.to_string());
        let now = fleet.flow_hosts("echo", &e.local.to_string());
        let moved = old == victim || now.iter().any(|&h| h != old);
        if old != victim && moved {
            rehashed += 1;
        }
        out.push((old, moved, result));
    }
    Failover {
        victim,
        detection,
        on_victim,
        rehashed,
        conns: out,
    }
}
