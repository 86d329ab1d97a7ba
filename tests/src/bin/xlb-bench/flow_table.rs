//! Section 1, continued: the flow table. Established flows in stateless and changed
//! slots at 1,000 and 1,000,000 live entries, a different flow per packet so that
//! lookups miss the CPU's caches as they would in production; new flows in both kinds
//! of slot; the table's memory from the kernel's accounting; and a SYN flood during a
//! change, held to the flood guard's rate.

use std::time::{Duration, Instant};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::Xdp,
};
use lb_common::{
    FlowKey, FlowValue, PROTO_TCP, Slot, flow_hash, maps::DEFAULT_FLOW_INSERT_RATE, table_slot,
};
use xlb::{
    controller::Controller,
    dataplane::{Dataplane, monotonic_ns},
};
use xlb_lab::packet::{ACK, SYN, tcp, v4};

use crate::{
    Bench, Mode, XDP_TX, fail,
    per_packet::{backend_totals, inserts},
    stats, test_run,
};

/// Flow `i`'s client: a source address in 198.19.0.0/16 and a port.
fn client(i: u32) -> ([u8; 4], u16) {
    ([198, 19, (i >> 8) as u8, i as u8], 1024 + (i >> 16) as u16)
}

/// Flow `i`'s packet to the web VIP with TCP `flags`.
fn candidate(i: u32, flags: u8) -> Vec<u8> {
    let ([a, b, c, d], port) = client(i);
    v4(
        &format!("{a}.{b}.{c}.{d}"),
        "198.18.0.100",
        tcp(port, 80, flags),
    )
    .bytes()
}

/// Flow `i`'s key (what the program builds from `candidate(i, _)`).
fn key(i: u32) -> FlowKey {
    let (src, port) = client(i);
    let mut key = FlowKey {
        sport_be: port.to_be(),
        dport_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: lb_common::FAMILY_V4,
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&src);
    key.dst[..4].copy_from_slice(&[198, 18, 0, 100]);
    key
}

/// The web VIP's live table: (generation, hash seed, stored slots).
struct Web {
    generation: u32,
    seed: u32,
    slots: Vec<u32>,
}

impl Web {
    fn read(ctl: &Controller) -> Web {
        let vip_id = ctl.current().map_or(0, |r| r.ids.vips["web"]);
        let (generation, slots) = ctl
            .maps()
            .table_slots(vip_id)
            .unwrap_or_else(|e| fail(format!("web's table: {e}")));
        Web {
            generation,
            seed: ctl.maps().config().map_or(0, |c| c.hash_seed),
            slots,
        }
    }

    fn slot(&self, i: u32) -> Slot {
        let at = table_slot(flow_hash(&key(i), self.seed), self.slots.len() as u32);
        Slot::unpack(self.slots[at as usize])
    }

    /// The first `n` flows from `from` whose slot is changed (with another owner than
    /// before) or stateless, per `changed`.
    fn flows(&self, from: u32, n: usize, changed: bool) -> Vec<u32> {
        (from..from + (1 << 26))
            .filter(|&i| {
                let s = self.slot(i);
                s.is_changed() == changed && (!changed || s.owner != s.previous)
            })
            .take(n)
            .collect()
    }
}

/// The pinned flow table, for filling it from userspace.
fn pinned_flows(bench: &Bench) -> HashMap<MapData, FlowKey, FlowValue> {
    let path = bench.opts.pin_dir.join(lb_common::maps::FLOWS);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
    HashMap::try_from(Map::HashMap(data)).unwrap_or_else(|e| fail(format!("xlb_flows: {e}")))
}

/// The flow table's memory as the kernel accounts it (`bpftool map show`'s
/// `bytes_memlock`).
fn memory(bench: &Bench) -> u64 {
    let path = bench.opts.pin_dir.join(lb_common::maps::FLOWS);
    let out = xlb_lab::netns::sh(&format!("bpftool -j map show pinned {}", path.display()));
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| fail(format!("bpftool: {e}")));
    v["bytes_memlock"].as_u64().unwrap_or(0)
}

/// ns per packet of each frame run once, in turn (each a different flow).
fn singles(prog: &Xdp, frames: &[Vec<u8>], want: u32) -> Vec<f64> {
    frames
        .iter()
        .map(|f| {
            let (rc, ns) = test_run(prog, f, 1);
            if rc != want {
                fail(format!("single run returned {rc}, expected {want}"));
            }
            ns
        })
        .collect()
}

/// One line of the flow-table table: (name, x floor) per case, at one table size.
struct Level {
    entries: usize,
    memory: u64,
    floor_ns: f64,
    cases: Vec<(&'static str, f64, f64)>,
}

pub(crate) fn flow_table(
    mode: &Mode,
    bench: &Bench,
    dp: &mut Dataplane,
    drop: &Xdp,
    syn_ns: f64,
    md: &mut String,
) {
    eprintln!("bench: flow table");
    // At most 20,000 flows a case and round: the SYNs in changed slots of both levels
    // must fit next to the million recorded flows.
    let n = (mode.single_runs as usize).min(20_000);
    let ctl = &bench.ctl;
    let web = Web::read(ctl);
    // Flows in changed slots: 1,000,000 to record, then the SYNs of both levels.
    let syns_from = 1_000_000;
    let changed = web.flows(0, syns_from + 2 * n * mode.runs, true);
    let stateless = web.flows(0, 2 * n * mode.runs, false);
    let mut flows = pinned_flows(bench);

    // The flood during a change: new SYNs in changed slots for one second under the
    // default guard; then their entries are deleted again.
    dp.maps()
        .set_flow_insert_rate(DEFAULT_FLOW_INSERT_RATE)
        .unwrap_or_else(|e| fail(format!("{e}")));
    let flood = web.flows(changed.last().map_or(0, |l| l + 1), 1_000_000, true);
    let (written, refused, sent, elapsed) = {
        let prog: &Xdp = dp.program().unwrap_or_else(|e| fail(format!("{e}")));
        let (before, refused_before) = (inserts(ctl), refused_rate(ctl));
        let start = Instant::now();
        let mut sent = 0usize;
        for &i in &flood {
            if start.elapsed() >= Duration::from_secs(1) {
                break;
            }
            let (rc, _) = test_run(prog, &candidate(i, SYN), 1);
            if rc != XDP_TX {
                fail(format!("flood SYN returned {rc}"));
            }
            sent += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let written = inserts(ctl) - before;
        (written, refused_rate(ctl) - refused_before, sent, elapsed)
    };
    for &i in &flood[..sent] {
        // Refused SYNs left none.
        match flows.remove(&key(i)) {
            Err(e) if !xlb::dataplane::maps::is_absent(&e) => {
                fail(format!("deleting a flood entry: {e}"));
            }
            _ => {}
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;

    dp.maps()
        .set_flow_insert_rate(u32::MAX)
        .unwrap_or_else(|e| fail(format!("{e}")));
    let prog: &Xdp = dp.program().unwrap_or_else(|e| fail(format!("{e}")));
    let mut levels = Vec::new();
    let mut filled = 0;
    for (level, entries) in [1_000usize, 1_000_000].into_iter().enumerate() {
        let now = monotonic_ns();
        for &i in &changed[filled..entries] {
            let value = FlowValue {
                backend_id: web.slot(i).previous,
                generation: web.generation,
                last_seen_ns: now,
            };
            flows
                .insert(key(i), value, 0)
                .unwrap_or_else(|e| fail(format!("filling xlb_flows: {e:?}")));
        }
        filled = entries;
        let memory = memory(bench);
        let held = ctl.maps().flows().len();
        // Recorded flows spread over the whole table, a different one per packet.
        let stride = entries / n;
        let mut rounds: Vec<[Vec<f64>; 5]> = Vec::new();
        for r in 0..mode.runs {
            let frames = |ids: &[u32], flags: u8| -> Vec<Vec<u8>> {
                ids.iter().map(|&i| candidate(i, flags)).collect()
            };
            let recorded: Vec<u32> = (0..n)
                .map(|k| changed[(k * stride + r) % entries])
                .collect();
            let est_changed = frames(&recorded, ACK);
            let est_stateless = frames(&stateless[r * n..(r + 1) * n], ACK);
            let syn_stateless = frames(
                &stateless[(mode.runs + r) * n..(mode.runs + r + 1) * n],
                SYN,
            );
            let base = syns_from + (level * mode.runs + r) * n;
            let syn_changed = frames(&changed[base..base + n], SYN);
            let floor = singles(drop, &est_stateless, crate::XDP_DROP);
            let before = inserts(ctl);
            let (packets_before, _) = backend_totals(ctl);
            let a = singles(prog, &est_stateless, XDP_TX);
            let b = singles(prog, &est_changed, XDP_TX);
            let c = singles(prog, &syn_stateless, XDP_TX);
            if inserts(ctl) != before {
                fail("an established flow or a steady-state SYN wrote a flow entry".into());
            }
            let d = singles(prog, &syn_changed, XDP_TX);
            if inserts(ctl) - before != n as u64 {
                fail(format!(
                    "{n} SYNs in changed slots wrote {} entries",
                    inserts(ctl) - before
                ));
            }
            if backend_totals(ctl).0 - packets_before != 4 * n as u64 {
                fail("not every packet reached a backend".into());
            }
            // The table stays at its level: the SYNs' entries go again.
            for &i in &changed[base..base + n] {
                flows
                    .remove(&key(i))
                    .unwrap_or_else(|e| fail(format!("deleting a SYN's entry: {e}")));
            }
            rounds.push([floor, a, b, c, d]);
        }
        let median = |k: usize| stats(rounds.iter().map(|r| stats(r[k].clone()).0).collect()).0;
        let ratio = |k: usize| {
            stats(
                rounds
                    .iter()
                    .map(|r| stats(r[k].clone()).0 / stats(r[0].clone()).0)
                    .collect(),
            )
            .0
        };
        levels.push(Level {
            entries: held,
            memory,
            floor_ns: median(0),
            cases: (1..5)
                .map(|k| (CASES[k - 1], median(k), ratio(k)))
                .collect(),
        });
    }

    push_line!(
        md,
        "### The flow table at 1,000 and 1,000,000 entries\n\nMethod: the flow table is \
         filled from userspace with entries of flows in changed slots of the IPv4 TCP VIP \
         (as the program would write them), to about 1,000 and then 1,000,000 entries. \
         Each case then runs {} different flows once each (BPF_PROG_TEST_RUN, repeat 1; \
         the recorded flows are spread over the whole table), in {} rounds; the table \
         shows the median of the rounds' medians, and x floor is the median of each \
         round's median over the XDP_DROP floor's, run once per packet the same way \
         (single runs carry the timer's own overhead, so compare ratios within this \
         table, not with the repeated cases above). Checked: established flows and \
         steady-state SYNs wrote no entry, every SYN in a changed slot wrote exactly one, \
         every packet reached a backend; the SYNs' entries are deleted after each round, \
         so the table stays at its size. Memory is the kernel's account of the map \
         (`bpftool map show`, `bytes_memlock`) at that size.\n\n\
         | entries | memory | floor, single runs (ns) | {} | {} | {} | {} |\n\
         |---:|---:|---:|---:|---:|---:|---:|",
        n,
        mode.runs,
        CASES[0],
        CASES[1],
        CASES[2],
        CASES[3],
    );
    for l in &levels {
        let cells: Vec<String> = l
            .cases
            .iter()
            .map(|(_, ns, x)| format!("{ns:.1} ns, {x:.2}x"))
            .collect();
        push_line!(
            md,
            "| {} | {:.1} MiB | {:.1} | {} |",
            l.entries,
            l.memory as f64 / (1 << 20) as f64,
            l.floor_ns,
            cells.join(" | ")
        );
    }
    push_line!(
        md,
        "\n### SYN flood\n\nWithout a change (every slot stateless) a SYN writes nothing: \
         the program absorbs them at the cost of the steady-state SYN above, {syn_ns:.1} ns \
         a packet, about {:.1} million a second on one CPU, with no entry written (the \
         repeated runs above check it). During a change, SYNs in changed slots are held \
         to the flood guard: {sent} different SYNs in changed slots, run one at a time for \
         {elapsed:.2} s at the default `flow_insert_rate` of {DEFAULT_FLOW_INSERT_RATE} a \
         second per CPU, wrote {written} entries and were refused {refused} ({:.0} entries \
         a second; the bound on this {cpus}-CPU machine is {} a second). Refused SYNs go \
         to the slot's previous owner, which is where their connections' later packets \
         go too.\n",
        1e3 / syn_ns,
        written as f64 / elapsed,
        u64::from(DEFAULT_FLOW_INSERT_RATE) * cpus,
    );
}

const CASES: [&str; 4] = [
    "established, stateless slot",
    "established, changed slot (entry)",
    "SYN, stateless slot",
    "SYN, changed slot (writes an entry)",
];

/// Inserts refused by the flood guard so far.
fn refused_rate(ctl: &Controller) -> u64 {
    ctl.maps().flow_stats().map_or(0, |s| s.refused_rate)
}
