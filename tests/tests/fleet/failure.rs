//! A host dies under long-lived connections: which host each connection used, the kill,
//! the router's withdrawal, and what each connection saw afterwards.

use std::time::{Duration, Instant};

use xlb_lab::{
    clients::Echo,
    fleet::{Fleet, Spec, VIP4},
};

use crate::lab::{echo, fingerprints, hosts_of, open_echoes, web};

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
/// router to withdraw it (and, with `resilient`, takes it out of the resilient group as
/// the router's routing stack would), then talks once on every connection.
pub(crate) fn fail_busiest_host(
    fleet: &mut Fleet,
    conns: &mut [Echo],
    resilient: bool,
) -> Failover {
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
    if resilient {
        fleet.resilient_group(&survivors);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut rehashed = 0;
    for (e, &old) in conns.iter_mut().zip(&before) {
        assert!(Instant::now() < deadline, "pings over their time bound");
        let (result, now) = match fleet.carriers("echo", e, "after the failure") {
            Ok(hosts) => (None, hosts),
            Err(err) => (Some(err.to_string()), Vec::new()),
        };
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

impl std::fmt::Display for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (moved, reset) = (
            self.conns.iter().filter(|c| c.1).count(),
            self.conns.iter().filter(|c| c.2.is_some()).count(),
        );
        write!(
            f,
            "host {} killed with {} of {} connections, withdrawn after {:?}; {moved} \
             moved host ({} between survivors); {reset} reset",
            self.victim,
            self.on_victim,
            self.conns.len(),
            self.detection,
            self.rehashed
        )
    }
}

/// 60 long-lived connections, then a weight change on every host (2:3:4 to 4:3:4),
/// then the busiest host dies. No flow state is shared between hosts, but every host's
/// table keeps a changed slot's previous owner (until the slot is swept, no sooner than
/// `flow_idle_timeout` after the change), and a host that gets a packet of a connection
/// it never saw sends it there. So no connection breaks, not even one that moves to
/// another host in a slot that changed owner; this checks each connection.
pub(crate) fn weight_change_then_failure(resilient: bool) -> Failover {
    let mut fleet = Fleet::new(Spec::new(3, vec![web(), echo()]));
    fleet.wait_next_hops(VIP4, &[0, 1, 2], Duration::from_secs(20));
    if resilient {
        fleet.resilient_route(&[0, 1, 2]);
    }
    let mut conns = open_echoes(&fleet, 30);
    for h in &fleet.hosts {
        h.daemon.xlb_ok(&["weight", "set", "echo", "b1", "4"]);
    }
    let first = fingerprints(&fleet.hosts[0].daemon);
    for h in &fleet.hosts[1..] {
        assert_eq!(fingerprints(&h.daemon), first, "the hosts' tables differ");
    }
    // A connection's slot changed owner when a new connection of its 5-tuple would go
    // elsewhere now, on any host.
    let homes = hosts_of(&fleet, "echo", &mut conns);
    let moved_slot: Vec<bool> = conns
        .iter()
        .zip(&homes)
        .map(|(e, &home)| {
            let other = &fleet.hosts[(home + 1) % 3].daemon;
            let x = other.explain("echo", &e.local.to_string());
            x["backend"] != e.backend.as_str()
        })
        .collect();
    let f = fail_busiest_host(&mut fleet, &mut conns, resilient);
    eprintln!(
        "{} of 60 connections in slots that changed owner",
        moved_slot.iter().filter(|m| **m).count()
    );
    for (i, ((_, moved, err), slot)) in f.conns.iter().zip(&moved_slot).enumerate() {
        assert!(
            err.is_none(),
            "connection {i} ({}): moved host {moved}, slot changed {slot}, error {err:?}",
            conns[i].local
        );
    }
    let both = f.conns.iter().zip(&moved_slot).filter(|(c, s)| c.1 && **s);
    eprintln!("{} connections moved host in a changed slot", both.count());
    f
}
