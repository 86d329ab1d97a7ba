//! `xlb trace`, the pure part: reading the program's trace records back, the filter a
//! client asked for, the one filter the kernel applies for all attached clients, and the
//! names a record is shown with. The daemon (`daemon::trace`) does the I/O.
//!
//! The kernel filters by destination address, verdict and backend, and bounds the rate
//! per CPU (`lb-ebpf/src/trace.rs`); with several clients it applies what they have in
//! common, and each client's exact filter (the VIP's port and protocol too) is applied
//! here.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use lb_common::{FAMILY_V4, FAMILY_V6, Reason, TRACE_ANY_BACKEND, TraceControl, VipKey};
use serde::{Deserialize, Serialize};

use crate::{controller::vip_key, history::Record as Generation};

/// Records per second per CPU unless the client asks for another bound.
pub const DEFAULT_RATE: u32 = 1000;
/// The highest bound a client may ask for. A record costs the program about 0.2 µs
/// (BENCHMARKS.md, section 1, "The trace stage"): at this bound, 0.1 % of each CPU.
pub const MAX_RATE: u32 = 5000;
/// How long the kernel keeps tracing without a renewal; the daemon renews every second.
pub const LEASE: Duration = Duration::from_secs(3);
/// The aya-log target of trace records.
pub const TARGET: &str = "xlb::trace";

/// Verdicts traced unless the client names others: every packet addressed to a VIP
/// address. The host's own traffic (not IP, not for a VIP, too short to tell) is left out.
pub fn default_reasons() -> u32 {
    Reason::ALL
        .iter()
        .filter(|r| {
            !matches!(
                r,
                Reason::PassNotIp | Reason::PassNotVip | Reason::PassTruncated
            )
        })
        .fold(0, |mask, r| mask | 1 << r.index())
}

/// A reason by its name (`Reason::name`, as `xlb stats` shows it).
pub fn reason_named(name: &str) -> Result<Reason, String> {
    Reason::ALL
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
            format!("unknown reason {name:?}: one of {}", names.join(", "))
        })
}

/// One packet's decision, as the program reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub reason: Reason,
    /// 0: no backend was chosen.
    pub backend_id: u32,
    pub new_flow: bool,
}

impl Record {
    /// Reads the message `lb-ebpf/src/trace.rs` logs: `family protocol source sport
    /// destination dport reason backend new`, addresses as IPv6 (an IPv4 address in its
    /// first four bytes).
    pub fn parse(message: &str) -> Result<Record, String> {
        let fields: Vec<&str> = message.split_ascii_whitespace().collect();
        let [family, proto, src, sport, dst, dport, reason, backend, new] = fields[..] else {
            return Err(format!("{} fields, expected 9", fields.len()));
        };
        let number = |what: &str, s: &str| -> Result<u32, String> {
            s.parse().map_err(|e| format!("{what} {s:?}: {e}"))
        };
        let family = number("family", family)?;
        let addr = |what: &str, s: &str| -> Result<IpAddr, String> {
            let v6: Ipv6Addr = s.parse().map_err(|e| format!("{what} {s:?}: {e}"))?;
            Ok(match family {
                f if f == u32::from(FAMILY_V4) => {
                    let o = v6.octets();
                    IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
                }
                _ => IpAddr::V6(v6),
            })
        };
        let reason = number("reason", reason)?;
        Ok(Record {
            proto: u8::try_from(number("protocol", proto)?).map_err(|e| e.to_string())?,
            src: addr("source", src)?,
            sport: u16::try_from(number("source port", sport)?).map_err(|e| e.to_string())?,
            dst: addr("destination", dst)?,
            dport: u16::try_from(number("destination port", dport)?).map_err(|e| e.to_string())?,
            reason: Reason::ALL
                .get(reason as usize)
                .copied()
                .ok_or_else(|| format!("reason {reason} out of range"))?,
            backend_id: number("backend", backend)?,
            new_flow: number("new", new)? != 0,
        })
    }
}

/// What one client asked to see, resolved to ids and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The VIP's address, port and protocol.
    pub vip: Option<VipMatch>,
    pub backend_id: Option<u32>,
    /// Bit `Reason::index()` per verdict shown.
    pub reasons: u32,
    /// Records per second per CPU.
    pub rate: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipMatch {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl Filter {
    /// Whether this client sees `r`. A packet without ports (a fragment, a truncated or
    /// odd protocol) matches a VIP by its address alone.
    pub fn matches(&self, r: &Record) -> bool {
        let vip = self.vip.is_none_or(|v| {
            v.addr == r.dst && (r.dport == 0 || (v.port == r.dport && v.proto == r.proto))
        });
        let backend = self.backend_id.is_none_or(|b| b == r.backend_id);
        vip && backend && self.reasons & (1 << r.reason.index()) != 0
    }
}

/// The kernel's filter for all of `clients`, on until `until_ns`: what they have in
/// common (a field they differ in is left open), their verdicts together, the highest
/// rate any asked for. No clients: off.
pub fn control<'a>(clients: impl IntoIterator<Item = &'a Filter>, until_ns: u64) -> TraceControl {
    let mut clients = clients.into_iter();
    let Some(first) = clients.next() else {
        return TraceControl::default();
    };
    let (mut addr, mut backend, mut reasons, mut rate) = (
        first.vip.map(|v| v.addr),
        first.backend_id,
        first.reasons,
        first.rate,
    );
    for c in clients {
        if addr != c.vip.map(|v| v.addr) {
            addr = None;
        }
        if backend != c.backend_id {
            backend = None;
        }
        reasons |= c.reasons;
        rate = rate.max(c.rate);
    }
    let (family, addr) = match addr {
        None => (0, [0; 16]),
        Some(IpAddr::V4(a)) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, out)
        }
        Some(IpAddr::V6(a)) => (FAMILY_V6, a.octets()),
    };
    TraceControl {
        until_ns,
        addr,
        family,
        reasons,
        backend_id: backend.unwrap_or(TRACE_ANY_BACKEND),
        per_cpu_rate: rate,
        ..TraceControl::default()
    }
}

/// The names of a generation's VIPs and backends, to show records with.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub generation: u64,
    vips: Vec<(String, VipMatch)>,
    /// Backend id -> "vip/backend".
    backends: BTreeMap<u32, String>,
}

impl Names {
    pub fn of(g: &Generation) -> Names {
        let vips = g
            .config
            .vips
            .iter()
            .filter_map(|v| {
                let key = vip_key(v)?;
                Some((v.name.clone(), vip_match(&key)))
            })
            .collect();
        let backends = g
            .ids
            .backends
            .iter()
            .map(|(k, &id)| (id, k.clone()))
            .collect();
        Names {
            generation: g.generation,
            vips,
            backends,
        }
    }

    /// A client's request resolved: VIP and backend by name, verdicts by name.
    pub fn filter(
        &self,
        vip: Option<&str>,
        backend: Option<&str>,
        reasons: &[String],
        rate: Option<u32>,
    ) -> Result<Filter, String> {
        let vip_match = match vip {
            None => None,
            Some(name) => Some(
                self.vips
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, m)| *m)
                    .ok_or_else(|| {
                        let known: Vec<&str> = self.vips.iter().map(|(n, _)| n.as_str()).collect();
                        format!("no VIP named {name:?}: running are {}", known.join(", "))
                    })?,
            ),
        };
        let backend_id = match backend {
            None => None,
            Some(b) => Some(self.backend_id(vip, b)?),
        };
        let reasons = if reasons.is_empty() {
            default_reasons()
        } else {
            reasons.iter().try_fold(0, |mask, name| {
                reason_named(name).map(|r| mask | 1 << r.index())
            })?
        };
        if (vip.is_some() || backend.is_some()) && reasons & default_reasons() == 0 {
            return Err(
                "packets of a VIP or a backend never have the verdicts pass_not_ip, \
                 pass_not_vip or pass_truncated: name neither to see them"
                    .into(),
            );
        }
        let rate = rate.unwrap_or(DEFAULT_RATE);
        if rate == 0 || rate > MAX_RATE {
            return Err(format!(
                "--rate {rate}: records per second per CPU must be 1 to {MAX_RATE}"
            ));
        }
        Ok(Filter {
            vip: vip_match,
            backend_id,
            reasons,
            rate,
        })
    }

    /// A backend named `vip/backend`, or `backend` within `vip`, or `backend` if one VIP
    /// alone has it.
    fn backend_id(&self, vip: Option<&str>, name: &str) -> Result<u32, String> {
        let matches = |key: &str| {
            key == name
                || key
                    .split_once('/')
                    .is_some_and(|(v, b)| b == name && vip.is_none_or(|w| w == v))
        };
        let found: Vec<(&u32, &String)> =
            self.backends.iter().filter(|(_, k)| matches(k)).collect();
        match (&found[..], vip) {
            (&[(_, key)], Some(v)) if !key.starts_with(&format!("{v}/")) => Err(format!(
                "backend {key} is not in VIP {v} (its backends: {})",
                self.backends_of(v)
            )),
            (&[(&id, _)], _) => Ok(id),
            (&[], Some(v)) => Err(format!(
                "VIP {v} has no backend {name:?} (its backends: {})",
                self.backends_of(v)
            )),
            (&[], None) => Err(format!(
                "no backend named {name:?} in the running generation (running are {})",
                self.backends
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            (_, _) => Err(format!(
                "backend {name:?} is in several VIPs ({}): name one as VIP/BACKEND or give the VIP",
                found
                    .iter()
                    .map(|(_, k)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The backends of VIP `vip`, by name, for messages.
    fn backends_of(&self, vip: &str) -> String {
        let prefix = format!("{vip}/");
        let names: Vec<&str> = self
            .backends
            .values()
            .filter_map(|k| k.strip_prefix(&prefix))
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// How a client sees `r`.
    pub fn event(&self, r: &Record) -> Event {
        // A packet without ports names a VIP only if that VIP is alone on its address.
        let on_address: Vec<&String> = self
            .vips
            .iter()
            .filter(|(_, m)| m.addr == r.dst)
            .map(|(n, _)| n)
            .collect();
        let vip = self
            .vips
            .iter()
            .find(|(_, m)| m.addr == r.dst && m.port == r.dport && m.proto == r.proto)
            .map(|(n, _)| n.clone())
            .or_else(|| match on_address[..] {
                [only] if r.dport == 0 => Some(only.clone()),
                _ => None,
            });
        let backend = (r.backend_id != 0).then(|| {
            self.backends
                .get(&r.backend_id)
                .cloned()
                .unwrap_or_else(|| format!("#{}", r.backend_id))
        });
        Event {
            vip,
            protocol: protocol_name(r.proto),
            client: socket(r.src, r.sport),
            destination: socket(r.dst, r.dport),
            reason: r.reason.name().into(),
            flow: match (&backend, r.new_flow) {
                (None, _) => None,
                (Some(_), true) => Some("new".into()),
                (Some(_), false) => Some("known".into()),
            },
            backend,
        }
    }
}

impl std::fmt::Display for VipMatch {
    /// `198.18.0.100:80/tcp`, `[2001:db8::53]:53/udp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = socket(self.addr, self.port);
        write!(f, "{at}/{}", protocol_name(self.proto))
    }
}

fn vip_match(key: &VipKey) -> VipMatch {
    let addr = if key.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    };
    VipMatch {
        addr,
        port: u16::from_be(key.port_be),
        proto: key.proto,
    }
}

/// IP protocol numbers as `ip` and `tcpdump` name them; others as numbers.
fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        lb_common::PROTO_TCP => "tcp".into(),
        lb_common::PROTO_UDP => "udp".into(),
        58 => "icmpv6".into(),
        p => format!("proto-{p}"),
    }
}

fn socket(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// One record as the CLI receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The VIP the packet was addressed to, if it was one.
    pub vip: Option<String>,
    pub protocol: String,
    pub client: String,
    pub destination: String,
    pub reason: String,
    /// "vip/backend", if one was chosen.
    pub backend: Option<String>,
    /// "new" (this packet started a flow on its backend, as `new_flows` counts) or
    /// "known", with a backend.
    pub flow: Option<String>,
}

#[cfg(test)]
mod tests;
