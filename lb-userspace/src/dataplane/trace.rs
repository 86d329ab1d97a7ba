//! The program's trace switch (`xlb_trace`), its rate bound's counters (`xlb_trace_rate`)
//! and aya-log's ring buffer, which carries the trace records. All three belong to the
//! loaded program and are never pinned: every load starts with tracing off.

use aya::maps::{Array, MapData, PerCpuArray};
use aya_log::EbpfLogger;
use lb_common::{TraceControl, TraceRate, maps as names};

use super::{
    Dataplane, DataplaneError,
    maps::{map_err, take},
};

/// Turns the program's trace on, off or to another filter.
pub struct TraceSwitch {
    control: Array<MapData, TraceControl>,
    rate: PerCpuArray<MapData, TraceRate>,
}

impl Dataplane {
    /// Takes the trace maps; `relay` receives every record the program logs (on the
    /// `flush` of the returned reader). Both must live as long as the program runs.
    pub fn take_trace<L: log::Log>(
        &mut self,
        relay: L,
    ) -> Result<(TraceSwitch, EbpfLogger<L>), DataplaneError> {
        let ebpf = self.ebpf_mut();
        let switch = TraceSwitch {
            control: take(ebpf, names::TRACE)?,
            rate: take(ebpf, names::TRACE_RATE)?,
        };
        let records = EbpfLogger::init_with_logger(ebpf, relay)?;
        Ok((switch, records))
    }
}

impl TraceSwitch {
    pub fn set(&mut self, control: &TraceControl) -> Result<(), DataplaneError> {
        self.control
            .set(0, control, 0)
            .map_err(map_err(names::TRACE, "setting the trace"))
    }

    /// Records the rate bound held back since the program was loaded, over all CPUs.
    pub fn suppressed(&self) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .rate
            .get(&0, 0)
            .map_err(map_err(names::TRACE_RATE, "reading"))?;
        Ok(per_cpu.iter().map(|r| r.suppressed).sum())
    }
}
