//! `cargo xtask demo --routed`: backends across a router (tests/src/routed.rs), reached
//! with `forwarding = "ipip"` and unwrapped by `xlb decap`: the spread, what a backend's
//! decap counted, a 10 MiB transfer behind a 1280-byte link (path MTU discovery through
//! xlb), and a ping to the VIP. Each step is checked; the exit status is non-zero if one
//! did not behave as shown.

use std::{collections::BTreeMap, net::IpAddr, process::ExitCode, time::Duration};

use lb_common::Reason;
use xlb_lab::{
    bulk::{BULK_PORT, Bulk},
    clients::{follows, http_many},
    daemon::{Daemon, VipSpec},
    demo::Step,
    netns::sh,
    routed::{IPIP_TABLE, Routed, backend_addr, decap_count, decap_stats},
    servers::{HTTP_PORT, Servers},
    topology::{VIP4, VIP6, backend_name, in_ns},
};

fn main() -> ExitCode {
    xlb_lab::demo::main(
        "the routed demo builds namespaces and attaches XDP",
        "All four steps behaved as shown.",
        run,
    )
}

fn check(ok: bool, what: String) -> Step {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(what)
    }
}

fn quote(text: &str) {
    for line in text.lines() {
        println!("  | {line}");
    }
}

fn run() -> Step {
    println!(
        "Lab: client -- router -- xlb; backends b1, b2, b3 in 198.18.3.0/24 behind the router.\n\
         The router's side of the client link has MTU 1280."
    );
    let lab = Routed::new(3, 1280);
    let sites = lab.sites();
    let _servers = Servers::start_on(&sites, [VIP4, VIP6]);
    let bulk = Bulk::start(&sites);
    let mut daemon = Daemon::in_namespace(&lab.lb.name);
    daemon.tables = IPIP_TABLE.into();
    daemon.addresses = backend_addr;
    daemon.write_config(&[
        VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 2, 3]).ipip(),
        VipSpec::tcp("bulk", VIP4, BULK_PORT, &[1, 1, 1]).ipip(),
        VipSpec::tcp("bulk6", VIP6, BULK_PORT, &[1, 1, 1]).ipip(),
    ]);
    daemon.start();

    let vip: IpAddr = VIP4.parse().map_err(|e| format!("{VIP4}: {e}"))?;
    let vip6: IpAddr = VIP6.parse().map_err(|e| format!("{VIP6}: {e}"))?;
    println!("\n=== 1. Backends in another subnet: wrapped in IPv4, routed by the kernel's FIB");
    quote(&sh(&format!(
        "ip -n {} route get {}",
        lab.lb.name,
        backend_addr(0, vip)
    )));
    let seen = in_ns(&lab.client.name, move || http_many(vip, 1500));
    let table = daemon.table_shares("web");
    println!("       weight    table  observed");
    for (i, share) in table.iter().enumerate() {
        let got = seen.get(&backend_name(i)).copied().unwrap_or(0);
        println!(
            "  {}   {}    {:5.1}%    {:5.1}%",
            backend_name(i),
            i + 1,
            share * 100.0,
            f64::from(got) / 15.0
        );
    }
    follows(&seen, &table, 0.05).map_err(|e| format!("step 1: {e}"))?;
    check(
        seen.values().sum::<u32>() == 1500,
        "1500 connections answered, every backend within 5 points of its table share".into(),
    )?;

    println!("\n=== 2. What a backend's decap counted");
    let pins = lab.decap_pins.path().join(backend_name(0));
    quote(&sh(&format!(
        "nsenter --net=/run/netns/{} {} decap stats eth0 --pin-dir {}",
        lab.backends[0].name,
        xlb_lab::daemon::xlb_bin().display(),
        pins.display()
    )));
    let stats = decap_stats(&lab.backends[0], &pins);
    check(
        decap_count(&stats, "decapsulated") > 0 && decap_count(&stats, "drop_wrong_source") == 0,
        "b1 unwrapped the load balancer's packets and refused none".into(),
    )?;

    println!("\n=== 3. 10 MiB from every backend behind the 1280-byte link: path MTU discovery");
    let before = daemon.reason(Reason::ForwardedIcmpError);
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    for (vip, addr) in [(VIP4, vip), (VIP6, vip6)] {
        for _ in 0..30 {
            let (who, bytes) = bulk
                .fetch(&lab.client.name, addr, Duration::from_secs(60))
                .map_err(|e| format!("step 3: {e}"))?;
            if bytes != xlb_lab::bulk::BULK_BYTES {
                return Err(format!("step 3: {bytes} bytes from {who}"));
            }
            *served.entry(format!("{who} via {vip}")).or_default() += 1;
            if served.keys().filter(|k| k.ends_with(vip)).count() == 3 {
                break;
            }
        }
    }
    println!("  transfers: {served:?}");
    let icmp = daemon.reason(Reason::ForwardedIcmpError) - before;
    println!("  ICMP errors from the router, forwarded by xlb to the flow's backend: {icmp}");
    quote(&sh(&format!(
        "ip -n {} route get 198.18.1.2 from {VIP4}",
        lab.backends[0].name
    )));
    check(
        served.len() == 6 && icmp > 0,
        "every backend sent 10 MiB over IPv4 and IPv6; their path MTU to the client learned \
         from the forwarded ICMP"
            .into(),
    )?;

    println!("\n=== 4. A ping to the VIP is answered by xlb");
    quote(&sh(&format!(
        "ip netns exec {} ping -c 2 -i 0.2 -W 2 {VIP4}",
        lab.client.name
    )));
    check(
        daemon.reason(Reason::ReplyIcmpEcho) >= 2,
        "xlb answered the echo requests (reply_icmp_echo)".into(),
    )
}
