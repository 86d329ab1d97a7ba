//! Atomicity of table switches, through the real controller and the real program: one
//! thread switches a VIP back and forth between two configs whose backend sets are
//! disjoint (every switch also retires the other set's backends), while other threads
//! push new flows through BPF_PROG_TEST_RUN. Every packet must be forwarded (never dropped
//! for want of a live backend) to a backend of the set that belongs to the generation of
//! the one table that packet read. After the first switch every slot has changed owner,
//! so each SYN is recorded, and its flow entry names that generation; before it, the
//! slots are stateless and a SYN leaves no entry (the first generation).

#![cfg(test)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{FAMILY_V4, FlowKey, PROTO_TCP};
use xlb::{
    config::{BackendSpec, Config, Forwarding, Protocol, Vip},
    controller::{Controller, Request},
    dataplane::{Dataplane, LoadOptions},
    history::{History, Source},
};
use xlb_lab::{
    PinDir,
    packet::{SYN, tcp, v4},
    require_root,
};

const SWITCHES: u32 = 120;
const SENDERS: usize = 2;

fn set(prefix: &str, mac_byte: u8) -> Vec<BackendSpec> {
    (1..=3)
        .map(|i| BackendSpec {
            name: format!("{prefix}{i}"),
            address: format!("198.18.0.{}", mac_byte + i),
            mac: format!("02:00:00:00:{mac_byte:02x}:{i:02x}"),
            weight: 1,
            line: None,
        })
        .collect()
}

fn config(backends: Vec<BackendSpec>) -> Config {
    let mut c = Config::default();
    c.daemon.table_size = 4099;
    c.vips.push(Vip {
        name: "web".into(),
        address: "198.18.0.100".into(),
        port: 80,
        protocol: Protocol::Tcp,
        forwarding: Forwarding::L2Dsr,
        icmp_echo: true,
        guardrails: Default::default(),
        health: None,
        backends,
        line: None,
    });
    c
}

#[test]
fn switching_disjoint_backend_sets_never_mixes_generations() {
    if !require_root("switching_disjoint_backend_sets_never_mixes_generations") {
        return;
    }
    let pins = PinDir::new("atomic");
    let state = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        pin_dir: pins.path().to_path_buf(),
        // Small, so the controller's walk of the flow table (before it reuses backend ids)
        // stays quick; each entry is read back and deleted right after its packet.
        flow_capacity: 16384,
        ..LoadOptions::default()
    };
    // Two loads share the pinned maps: one program for test runs, one set of map
    // handles for the controller.
    let runner = Arc::new(Mutex::new(Dataplane::load(&opts).unwrap()));
    let mut ctl = Controller::new(
        Dataplane::load(&opts).unwrap().into_maps(),
        History::open(state.path()).unwrap(),
        // No neighbour lookups here: every MAC is explicit.
        Box::new(|_, _| BTreeMap::new()),
    )
    .unwrap();
    // Set A's MACs end in 0x0a, set B's in 0x0b.
    let configs = [config(set("a", 0x0a)), config(set("b", 0x0b))];
    let apply = |ctl: &mut Controller, i: usize| {
        ctl.apply(Request {
            config: configs[i].clone(),
            source: Source::File {
                file: format!("set-{i}").into(),
            },
            user: "test".into(),
            force: true,
            reason: Some("atomicity test: disjoint sets".into()),
            dry_run: false,
        })
        .unwrap()
        .generation
        .unwrap()
    };
    // No SYN may be refused an entry (it would go to the previous owner).
    runner
        .lock()
        .unwrap()
        .maps()
        .set_flow_insert_rate(u32::MAX)
        .unwrap();
    let mut set_of_generation: BTreeMap<u32, u8> = BTreeMap::new();
    let first = apply(&mut ctl, 0) as u32;
    set_of_generation.insert(first, 0x0a);

    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let runner = Arc::clone(&runner);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                // (mac set byte, generation) per packet.
                let mut seen = Vec::new();
                let mut drops = 0u32;
                let mut n: u32 = 0;
                // Bounded in count and time.
                while !stop.load(Ordering::Relaxed) && n < 2_000_000 && Instant::now() < deadline {
                    n += 1;
                    let src = format!(
                        "198.18.{}.{}",
                        1 + t * 64 + (n >> 16) as usize,
                        (n >> 8) & 0xff
                    );
                    let sport = 1024 + (n & 0xff) as u16 * 200 + t as u16;
                    let frame = v4(&src, "198.18.0.100", tcp(sport, 80, SYN));
                    let input = frame.bytes();
                    let mut out = vec![0u8; input.len() + 64];
                    let mut dp = runner.lock().unwrap();
                    let r = dp
                        .program()
                        .unwrap()
                        .test_run(TestRunOptions {
                            data_in: Some(&input),
                            data_out: Some(&mut out),
                            ..TestRunOptions::default()
                        })
                        .unwrap();
                    if r.return_value != 3 {
                        drops += 1;
                        continue;
                    }
                    let mut key = FlowKey {
                        proto: PROTO_TCP,
                        family: FAMILY_V4,
                        sport_be: sport.to_be(),
                        dport_be: 80u16.to_be(),
                        ..FlowKey::default()
                    };
                    key.src[..4]
                        .copy_from_slice(&src.parse::<std::net::Ipv4Addr>().unwrap().octets());
                    key.dst[..4].copy_from_slice(&[198, 18, 0, 100]);
                    let generation = match dp.maps().flow(&key) {
                        Some(flow) => {
                            dp.maps().remove_flow(&key).unwrap();
                            flow.generation
                        }
                        None => first,
                    };
                    drop(dp);
                    seen.push((out[4], generation));
                }
                (seen, drops)
            })
        })
        .collect();

    for i in 1..=SWITCHES {
        let which = (i % 2) as usize;
        let g = apply(&mut ctl, which);

        set_of_generation.insert(g as u32, [0x0a, 0x0b][which]);
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0usize;
    let mut per_generation: BTreeMap<u32, usize> = BTreeMap::new();
    for s in senders {
        let (seen, drops) = s.join().unwrap();
        assert_eq!(drops, 0, "packets not forwarded during switches");
        for (set, generation) in seen {
            let want = set_of_generation[&generation];
            assert_eq!(
                set, want,
                "generation {generation} forwarded to set {set:#x}, its table names set {want:#x}"
            );
            *per_generation.entry(generation).or_default() += 1;
            total += 1;
        }
    }
    // The test only proves something if packets really ran during many switches.
    assert!(total > 1000, "only {total} packets ran");
    assert!(
        per_generation.len() > (SWITCHES * 3 / 4) as usize,
        "packets saw only {} of {} generations",
        per_generation.len(),
        SWITCHES + 1
    );
    assert_eq!(
        ctl.history().generations().unwrap().len(),
        SWITCHES as usize + 1
    );
}
