//! Section 4: the control plane: building and applying tables, validating, reading
//! stats through the socket, and what the maps cost in memory.

use xlb::{
    config::{Config, Protocol},
    guard::{self, Health, Maglev},
    table::{self, Weighted},
};

use crate::{Bench, Mode, backends, fail, ms, request, stats, time, vip};

/// Section 4: control-plane latencies.
pub(crate) fn control_plane(mode: &Mode, md: &mut String, missed: &mut Vec<String>) {
    eprintln!("bench: control plane");
    push_line!(
        md,
        "## 4. Control plane\n\nMethod: wall-clock time in this process, median of {} \
         runs (spread min..max). Tables have 65537 slots. \"build\" is the table builder \
         alone; \"apply\" is the whole `Controller::apply` of a weight change: plan and \
         guardrails, id assignment (a walk of the flow table, here empty), writing the \
         new table and switching it in, and the fsync'd history record.\n\n\
         | what | ms (median) | spread |\n|---|---:|---:|",
        mode.runs
    );
    for n in [1usize, 100, 1000] {
        let specs = backends(n, "b");
        let input: Vec<Weighted> = specs
            .iter()
            .map(|b| Weighted {
                name: &b.name,
                weight: b.weight(),
            })
            .collect();
        let samples: Vec<f64> = (0..mode.runs)
            .map(|_| ms(time(|| table::build(&input, 65537)).1))
            .collect();
        let (m, lo, hi) = stats(samples);
        push_line!(md, "| build, {n} backends | {m:.2} | {lo:.2}..{hi:.2} |");
    }
    const MAX_BACKENDS: u32 = 2048;
    let mut apply_1000 = f64::MAX;
    for n in [2usize, 100, 1000] {
        // Room for 1000 backends: more than the default `max_backends`.
        let mut bench = Bench::sized(65536, MAX_BACKENDS);
        let ctl = &mut bench.ctl;
        let mut config = Config {
            vips: vec![vip("web", "198.18.0.100", 80, Protocol::Tcp, n)],
            ..Config::default()
        };
        config.daemon.max_backends = MAX_BACKENDS;
        ctl.apply(request(config.clone()))
            .unwrap_or_else(|e| fail(format!("apply: {e}")));
        let samples: Vec<f64> = (0..mode.runs)
            .map(|i| {
                config.vips[0].backends[0].weight = if i % 2 == 0 { 3 } else { 2 };
                let (r, d) = time(|| ctl.apply(request(config.clone())));
                r.unwrap_or_else(|e| fail(format!("apply: {e}")));
                ms(d)
            })
            .collect();
        let (m, lo, hi) = stats(samples);
        if n == 1000 {
            apply_1000 = m;
        }
        push_line!(
            md,
            "| build + apply a weight change, {n} backends | {m:.2} | {lo:.2}..{hi:.2} |"
        );
        let samples: Vec<f64> = (0..mode.runs).map(|_| ms(time(|| ctl.stats()).1)).collect();
        let (m, lo, hi) = stats(samples);
        push_line!(
            md,
            "| stats (the daemon's handler, no socket), {n} backends | {m:.2} | {lo:.2}..{hi:.2} |"
        );
    }
    let config = Config {
        vips: (0..100)
            .map(|i| {
                vip(
                    &format!("v{i}"),
                    &format!("198.18.2.{}", i + 1),
                    80,
                    Protocol::Tcp,
                    3,
                )
            })
            .collect(),
        ..Config::default()
    };
    let samples: Vec<f64> = (0..mode.runs)
        .map(|_| ms(time(|| guard::plan(&config, None, &Health::new(), &Maglev)).1))
        .collect();
    let (m, lo, hi) = stats(samples);
    push_line!(
        md,
        "| validate a 100-VIP config (3 backends each) | {m:.2} | {lo:.2}..{hi:.2} |"
    );
    let (m, lo, hi) = stats(stats_through_socket(mode.runs));
    push_line!(
        md,
        "| `xlb stats` through the daemon's socket (the CLI process included), 3 backends \
         | {m:.2} | {lo:.2}..{hi:.2} |"
    );
    let table = memlock(
        65537 + lb_common::maps::TABLE_HEADER,
        lb_common::maps::TABLE_MAP_FLAGS,
    );
    let capacity = lb_common::maps::DEFAULT_FLOW_CAPACITY;
    let flows = memlock_flows(capacity);
    push_line!(
        md,
        "\nMap memory, as the kernel accounts it (`memlock` in /proc/self/fdinfo of a map \
         created like the daemon's): one VIP's 65537-slot table is {table} bytes ({:.0} KiB; \
         an array stores each 4-byte value in 8 bytes, and an mmap-able one is \
         page-rounded), plus one `xlb_vips` entry and one per-CPU `xlb_vip_stats` entry. \
         Flows are shared by all VIPs: an empty flow table of the default {capacity} \
         entries is {flows} bytes ({:.1} MiB, its buckets); it allocates each entry when \
         it is written (section 1 measures it at 1,000 and 1,000,000 entries).\n",
        table as f64 / 1024.0,
        flows as f64 / f64::from(1 << 20)
    );
    push_line!(
        md,
        "Target: build + apply for 1000 backends < 50 ms: {apply_1000:.1} ms, {}.\n",
        if apply_1000 < 50.0 { "met" } else { "MISSED" }
    );
    if apply_1000 >= 50.0 {
        missed.push(format!(
            "Build + apply for 1000 backends (section 4): {apply_1000:.1} ms."
        ));
    }
}

/// `memlock` of a map fd, from /proc/self/fdinfo.
fn fd_memlock(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .unwrap_or_else(|e| fail(format!("fdinfo: {e}")));
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| fail("no memlock in fdinfo".into()))
}

/// Memory of a table (inner map) of `entries` entries, created as the controller does.
fn memlock(entries: u32, flags: u32) -> u64 {
    use aya::maps::{Array, IterableMap, MapData};
    use std::os::fd::AsFd;
    let t: Array<MapData, u32> =
        Array::create(entries, flags).unwrap_or_else(|e| fail(format!("create table: {e}")));
    fd_memlock(t.map().fd().as_fd())
}

/// Memory of the flow table at `capacity`, loaded as the daemon loads it.
fn memlock_flows(capacity: u32) -> u64 {
    use std::os::fd::AsFd;
    let bench = Bench::new(capacity);
    let path = bench.opts.pin_dir.join(lb_common::maps::FLOWS);
    let map = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| fail(format!("open {}: {e}", path.display())));
    fd_memlock(map.fd().as_fd())
}

/// Wall time of `xlb stats` against the real daemon in a lab topology, in ms.
fn stats_through_socket(runs: usize) -> Vec<f64> {
    let topo = xlb_lab::topology::Topology::new(1, 3);
    let mut d = xlb_lab::daemon::Daemon::new(&topo);
    d.write_config(&[xlb_lab::daemon::VipSpec::tcp(
        "web",
        xlb_lab::topology::VIP4,
        80,
        &[1, 1, 1],
    )]);
    d.start();
    (0..runs)
        .map(|_| {
            let (out, t) = time(|| d.xlb(&["stats"]));
            if !out.status.success() {
                fail(format!("xlb stats: {}", xlb_lab::daemon::text(&out)));
            }
            ms(t)
        })
        .collect()
}
