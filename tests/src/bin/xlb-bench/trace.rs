//! Section 1, continued: what the trace stage costs a packet with `xlb trace` off, on for
//! other traffic, on past its rate bound, and per record it sends.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::programs::Xdp;
use lb_common::{FAMILY_V4, Reason, TRACE_ANY_BACKEND, TraceControl};
use xlb::{
    config::{Config, Protocol},
    dataplane::Dataplane,
};
use xlb_lab::packet::{ACK, tcp, v4};

use crate::{
    Bench, Mode, XDP_DROP, XDP_TX, fail, floor, load_floor, request, stats, test_run, vip,
};

/// Counts the records the program sends; shows none.
struct Count(Arc<AtomicU64>);

impl log::Log for Count {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, _: &log::Record<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&self) {}
}

/// Repeats of the recording case: each run's records must fit aya-log's 128 KiB ring
/// buffer, which is drained between runs.
const RECORDED: u32 = 200;

pub(crate) fn trace_cost(mode: &Mode, md: &mut String) {
    eprintln!("bench: cost of the trace");
    let mut bench = Bench::new(1 << 16);
    let config = Config {
        vips: vec![vip("web", "198.18.0.100", 80, Protocol::Tcp, 3)],
        ..Config::default()
    };
    bench
        .ctl
        .apply(request(config))
        .unwrap_or_else(|e| fail(format!("apply: {e}")));
    let mut dp = Dataplane::load(&bench.opts).unwrap_or_else(|e| fail(format!("load: {e}")));
    let sent = Arc::new(AtomicU64::new(0));
    let (mut switch, mut records) = dp
        .take_trace(Count(Arc::clone(&sent)))
        .unwrap_or_else(|e| fail(format!("trace maps: {e}")));
    let refs = load_floor();
    let drop = floor(&refs);
    let prog: &Xdp = dp.program().unwrap_or_else(|e| fail(format!("{e}")));
    let pkt = v4("198.18.1.1", "198.18.0.100", tcp(40000, 80, ACK)).bytes();
    // The first run inserts the flow entry: every later one is of an established flow.
    if test_run(prog, &pkt, 1).0 != XDP_TX {
        fail("the traced packet is not forwarded".into());
    }
    let on = |addr: [u8; 4], rate: u32| {
        let mut control = TraceControl {
            until_ns: u64::MAX,
            family: FAMILY_V4,
            reasons: 1 << Reason::Forwarded.index(),
            backend_id: TRACE_ANY_BACKEND,
            per_cpu_rate: rate,
            ..TraceControl::default()
        };
        control.addr[..4].copy_from_slice(&addr);
        control
    };
    let vip_addr = [198, 18, 0, 100];
    let cases: [(&str, TraceControl, u32); 4] = [
        (
            "trace off (no client attached)",
            TraceControl::default(),
            mode.repeat,
        ),
        (
            "trace on for another address (filtered out)",
            on([198, 18, 0, 250], 1000),
            mode.repeat,
        ),
        (
            "trace on for this packet, past its rate bound (held back)",
            on(vip_addr, 1),
            mode.repeat,
        ),
        (
            "trace on for this packet, every packet recorded",
            on(vip_addr, u32::MAX),
            RECORDED,
        ),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut floors: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..mode.runs {
        for (i, (name, control, repeat)) in cases.iter().enumerate() {
            switch
                .set(control)
                .unwrap_or_else(|e| fail(format!("set the trace: {e}")));
            let held_before = switch.suppressed().unwrap_or_else(|e| fail(format!("{e}")));
            records.flush();
            let sent_before = sent.load(Ordering::Relaxed);
            let (rc, floor) = test_run(drop, &pkt, *repeat);
            if rc != XDP_DROP {
                fail(format!("floor returned {rc}"));
            }
            let (rc, ns) = test_run(prog, &pkt, *repeat);
            if rc != XDP_TX {
                fail(format!("{name}: returned {rc}"));
            }
            records.flush();
            let got = sent.load(Ordering::Relaxed) - sent_before;
            let held = switch.suppressed().unwrap_or_else(|e| fail(format!("{e}"))) - held_before;
            // Off and filtered out: nothing sent or held. Past the bound: at most one
            // record per window, the rest held. Recording: every packet sent.
            let expected = match i {
                0 | 1 => got == 0 && held == 0,
                2 => got <= 2 && got + held == u64::from(*repeat),
                _ => got == u64::from(*repeat) && held == 0,
            };
            if !expected {
                fail(format!(
                    "{name}: {got} records sent and {held} held back in {repeat} packets"
                ));
            }
            samples[i].push(ns);
            floors[i].push(ns / floor);
        }
    }
    switch
        .set(&TraceControl::default())
        .unwrap_or_else(|e| fail(format!("{e}")));
    push_line!(
        md,
        "### The trace stage\n\nMethod: the same established TCP packet through \
         BPF_PROG_TEST_RUN, with the program's trace switch (`.data.xlb_trace`) set as `xlb \
         trace` would set it; each case followed by the XDP_DROP floor in the same round, \
         {} rounds. Checked per run: off and filtered out, no record sent and none held \
         back; past the rate bound (1 record/s), at most one record per one-second window \
         and every other packet counted as held back; recording, exactly one record per \
         packet, read from aya-log's ring buffer after each run of {RECORDED} (the buffer \
         holds 128 KiB). Repeat {} except for the recording case.\n\n| case | ns (median) \
         | spread | x floor (median of rounds) |\n|---|---:|---:|---:|",
        mode.runs,
        mode.repeat
    );
    for (i, (name, ..)) in cases.iter().enumerate() {
        let (median, min, max) = stats(samples[i].clone());
        let (ratio, ..) = stats(floors[i].clone());
        push_line!(
            md,
            "| {name} | {median:.1} | {min:.1}..{max:.1} | {ratio:.2} |"
        );
    }
    let (off, ..) = stats(samples[0].clone());
    let (record, ..) = stats(samples[3].clone());
    push_line!(
        md,
        "\nA record costs about {:.0} ns over an untraced packet; at `xlb trace`'s highest \
         rate bound ({} records/s per CPU) that is {:.2} % of each CPU.\n",
        record - off,
        xlb::trace::MAX_RATE,
        (record - off) * f64::from(xlb::trace::MAX_RATE) / 1e7
    );
}
