//! The fixture table: every frame the program is shown, with the verdict, output and
//! counters it must produce.

use lb_common::{PROTO_TCP, Reason, VipKey};
use xlb_lab::packet::{ACK, L4, SYN, tcp, udp, v4, v6};

use super::setup::{C4, C6, VIP4, VIP6, v4_key};

/// What a fixture expects.
pub(crate) enum Expect {
    /// Forwarded to the backend the hash and table predict; `new_flow` as given.
    Forward { vip: usize, new_flow: bool },
    /// Returned with this reason, the frame untouched.
    Untouched(Reason),
    /// Dropped with this reason and counted as a drop of VIP `vip`.
    VipDrop(usize),
}

pub(crate) struct Fixture {
    pub(crate) what: &'static str,
    pub(crate) input: Vec<u8>,
    pub(crate) frame: Option<xlb_lab::packet::Frame>,
    pub(crate) expect: Expect,
}

fn fx(what: &'static str, frame: xlb_lab::packet::Frame, expect: Expect) -> Fixture {
    Fixture {
        what,
        input: frame.bytes(),
        frame: Some(frame),
        expect,
    }
}

fn raw(what: &'static str, input: Vec<u8>, reason: Reason) -> Fixture {
    Fixture {
        what,
        input,
        frame: None,
        expect: Expect::Untouched(reason),
    }
}

fn truncate(frame: xlb_lab::packet::Frame, len: usize) -> Vec<u8> {
    let mut b = frame.bytes();
    b.truncate(len);
    b
}

pub(crate) fn fixtures() -> Vec<Fixture> {
    use Expect::*;
    use Reason::*;
    let arp = {
        let mut b = vec![0xff; 6];
        b.extend_from_slice(&xlb_lab::packet::CLIENT_MAC);
        b.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        b.extend_from_slice(&[0; 28]);
        b
    };
    let lldp = {
        let mut b = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
        b.extend_from_slice(&xlb_lab::packet::CLIENT_MAC);
        b.extend_from_slice(&[0x88, 0xcc]);
        b.extend_from_slice(&[0; 46]);
        b
    };
    vec![
        fx(
            "v4 TCP SYN to a VIP goes to the predicted backend",
            v4(C4, VIP4, tcp(40000, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "a later packet of that flow stays, no new flow",
            v4(C4, VIP4, tcp(40000, 80, ACK)),
            Forward {
                vip: 0,
                new_flow: false,
            },
        ),
        fx(
            "a SYN again on that 5-tuple in a stateless slot: counted again (no state \
             tells a retransmission apart)",
            v4(C4, VIP4, tcp(40000, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "another client port is a new flow",
            v4(C4, VIP4, tcp(40001, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "another client address is a new flow",
            v4("198.18.7.9", VIP4, tcp(40000, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "v6 TCP SYN to a v6 VIP",
            v6(C6, VIP6, tcp(50000, 443, SYN)),
            Forward {
                vip: 1,
                new_flow: true,
            },
        ),
        fx(
            "v6 flow keeps its backend",
            v6(C6, VIP6, tcp(50000, 443, ACK)),
            Forward {
                vip: 1,
                new_flow: false,
            },
        ),
        fx(
            "v4 UDP to a UDP VIP (stateless slot: no flow to count)",
            v4(C4, VIP4, udp(5353, 53)),
            Forward {
                vip: 2,
                new_flow: false,
            },
        ),
        fx(
            "v4 UDP repeat is the same flow",
            v4(C4, VIP4, udp(5353, 53)),
            Forward {
                vip: 2,
                new_flow: false,
            },
        ),
        fx(
            "v6 UDP to a v6 UDP VIP",
            v6(C6, "2001:db8::20", udp(6000, 80)),
            Forward {
                vip: 4,
                new_flow: false,
            },
        ),
        fx(
            "IPv4 with 12 bytes of options",
            v4(C4, VIP4, tcp(40100, 80, SYN)).options(&[1; 12]),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "IPv4 with the maximum 40 bytes of options",
            v4(C4, VIP4, tcp(40101, 80, SYN)).options(&[1; 40]),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "802.1Q-tagged v4 keeps its tag",
            v4(C4, VIP4, tcp(40200, 80, SYN)).vlan(100),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "802.1Q-tagged v6",
            v6(C6, VIP6, tcp(50200, 443, SYN)).vlan(7),
            Forward {
                vip: 1,
                new_flow: true,
            },
        ),
        raw("ARP passes untouched", arp, PassNotIp),
        raw("LLDP passes untouched", lldp, PassNotIp),
        fx(
            "v4 TCP to a non-VIP address",
            v4(C4, "198.18.5.5", tcp(40000, 80, SYN)),
            Untouched(PassNotVip),
        ),
        fx(
            "v4 TCP to a VIP address on another port",
            v4(C4, VIP4, tcp(40000, 8080, SYN)),
            Untouched(PassNotVip),
        ),
        {
            let (addr, port) = filter_twin(&v4_key(VIP4, 80, PROTO_TCP));
            fx(
                "v4 TCP to a non-VIP whose filter bit a VIP also has",
                v4(C4, &addr, tcp(40000, port, SYN)),
                Untouched(PassNotVip),
            )
        },
        fx(
            "v4 UDP to a TCP-only VIP port",
            v4(C4, VIP4, udp(40000, 80)),
            Untouched(PassNotVip),
        ),
        fx(
            "v6 TCP to a non-VIP address",
            v6(C6, "2001:db8::99", tcp(50000, 443, SYN)),
            Untouched(PassNotVip),
        ),
        raw(
            "802.1Q tag cut short",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)).vlan(5), 16),
            PassTruncated,
        ),
        raw(
            "IPv4 header cut short",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)), 14 + 19),
            PassTruncated,
        ),
        raw(
            "IPv6 header cut short",
            truncate(v6(C6, VIP6, tcp(1, 443, SYN)), 14 + 39),
            PassTruncated,
        ),
        raw(
            "TCP header cut short, to a VIP",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)), 14 + 20 + 19),
            DropTruncated,
        ),
        raw(
            "TCP ports only, to a VIP",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)), 14 + 20 + 4),
            DropTruncated,
        ),
        raw(
            "UDP header cut short, to a VIP",
            truncate(v4(C4, VIP4, udp(1, 53)), 14 + 20 + 7),
            DropTruncated,
        ),
        raw(
            "v6 TCP header cut short, to a VIP",
            truncate(v6(C6, VIP6, tcp(1, 443, SYN)), 14 + 40 + 10),
            DropTruncated,
        ),
        raw(
            "IPv4 options run past the end, to a VIP",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)).options(&[1; 40]), 14 + 60),
            DropTruncated,
        ),
        raw(
            "TCP header cut short, not for a VIP",
            truncate(v4(C4, "198.18.5.5", tcp(1, 80, SYN)), 14 + 20 + 10),
            PassNotVip,
        ),
        fx(
            "first IPv4 fragment to a VIP",
            v4(C4, VIP4, tcp(1, 80, SYN)).frag(0x2000),
            Untouched(DropFragment),
        ),
        fx(
            "later IPv4 fragment to a VIP",
            v4(
                C4,
                VIP4,
                L4::Raw {
                    proto: 6,
                    payload: vec![0; 24],
                },
            )
            .frag(0x0003),
            Untouched(DropFragment),
        ),
        fx(
            "IPv4 fragment not for a VIP",
            v4(C4, "198.18.5.5", tcp(1, 80, SYN)).frag(0x2000),
            Untouched(PassNotVip),
        ),
        fx(
            "IPv6 fragment header to a VIP",
            v6(C6, VIP6, tcp(1, 443, SYN)).ext(44),
            Untouched(DropFragment),
        ),
        fx(
            "IPv6 hop-by-hop header to a VIP",
            v6(C6, VIP6, tcp(1, 443, SYN)).ext(0),
            Untouched(DropIpv6ExtHeader),
        ),
        fx(
            "IPv6 routing header to a VIP",
            v6(C6, VIP6, tcp(1, 443, SYN)).ext(43),
            Untouched(DropIpv6ExtHeader),
        ),
        fx(
            "IPv6 extension header not for a VIP",
            v6(C6, "2001:db8::99", tcp(1, 443, SYN)).ext(0),
            Untouched(PassNotVip),
        ),
        fx(
            "ICMP echo to a VIP address whose VIPs do not answer echo",
            v4(
                C4,
                VIP4,
                L4::Raw {
                    proto: 1,
                    payload: vec![8, 0, 0, 0, 0, 1, 0, 1],
                },
            ),
            Untouched(PassIcmp),
        ),
        fx(
            "ICMPv6 echo to a VIP address whose VIPs do not answer echo",
            v6(
                C6,
                VIP6,
                L4::Raw {
                    proto: 58,
                    payload: vec![128, 0, 0, 0, 0, 1, 0, 1],
                },
            ),
            Untouched(PassIcmp),
        ),
        fx(
            "GRE to a VIP address",
            v4(
                C4,
                VIP4,
                L4::Raw {
                    proto: 47,
                    payload: vec![0; 8],
                },
            ),
            Untouched(DropUnknownProto),
        ),
        fx(
            "SCTP to a v6 VIP address",
            v6(
                C6,
                VIP6,
                L4::Raw {
                    proto: 132,
                    payload: vec![0; 12],
                },
            ),
            Untouched(DropUnknownProto),
        ),
        fx(
            "GRE not for a VIP",
            v4(
                C4,
                "198.18.5.5",
                L4::Raw {
                    proto: 47,
                    payload: vec![0; 8],
                },
            ),
            Untouched(PassNotVip),
        ),
        fx(
            "a VIP without any table",
            v4(C4, "198.18.0.20", tcp(40000, 80, SYN)),
            VipDrop(3),
        ),
        raw(
            "IPv4 header length below 20, to a VIP",
            {
                let mut b = v4(C4, VIP4, tcp(1, 80, SYN)).bytes();
                b[14] = 0x44;
                b
            },
            DropBadHeader,
        ),
        raw(
            "IP version 6 inside an IPv4 ethertype, to a VIP",
            {
                let mut b = v4(C4, VIP4, tcp(1, 80, SYN)).bytes();
                b[14] = 0x65;
                b
            },
            DropBadHeader,
        ),
    ]
}

/// An IPv4 address and TCP port that are no VIP but share `vip`'s `xlb_vip_filter` bit:
/// such a packet passes the filter and must be told apart by the exact lookup.
pub(crate) fn filter_twin(vip: &VipKey) -> (String, u16) {
    (0..=255u8)
        .flat_map(|host| (1..=u16::MAX).map(move |port| (host, port)))
        .map(|(host, port)| (format!("198.18.9.{host}"), port))
        .find(|(addr, port)| v4_key(addr, *port, PROTO_TCP).filter_bit() == vip.filter_bit())
        .expect("some address and port share the bit")
}
