//! Builds test frames byte by byte: Ethernet (optionally 802.1Q), IPv4 (with options and
//! fragment fields) or IPv6 (with an extension header), and TCP, UDP or raw payloads.
//! Checksums are filled in so captures look right, although the XDP program ignores them.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1b];

/// Layer 4 content of a frame.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Any protocol number with an opaque payload.
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut b = Vec::with_capacity(20);
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes()); // seq
                b.extend_from_slice(&0u32.to_be_bytes()); // ack
                b.push(5 << 4); // data offset
                b.push(*flags);
                b.extend_from_slice(&65535u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                b
            }
            L4::Udp { sport, dport } => {
                let mut b = Vec::with_capacity(12);
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&12u16.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(b"ping");
                b
            }
            L4::Raw { payload, .. } => payload.clone(),
        }
    }
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// A frame under construction.
#[derive(Clone, Debug)]
pub struct Frame {
    pub vlan: Option<u16>,
    pub l3: L3,
    pub l4: L4,
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    /// Zero bytes of payload after the L4 header.
    pub pad: usize,
}

#[derive(Clone, Debug)]
pub enum L3 {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// IPv4 option bytes (a multiple of 4).
        options: Vec<u8>,
        /// The 16-bit flags + fragment offset field.
        frag: u16,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        /// One extension header of this type before the L4 header.
        ext: Option<u8>,
    },
}

pub fn v4(src: &str, dst: &str, l4: L4) -> Frame {
    Frame {
        vlan: None,
        l3: L3::V4 {
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            options: Vec::new(),
            frag: 0x4000, // don't fragment
        },
        l4,
        tos: 0,
        pad: 0,
    }
}

pub fn v6(src: &str, dst: &str, l4: L4) -> Frame {
    Frame {
        vlan: None,
        l3: L3::V6 {
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            ext: None,
        },
        l4,
        tos: 0,
        pad: 0,
    }
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

/// The Internet checksum of `data` (RFC 1071): 0 over data that includes its own.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Frame {
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        if let L3::V4 { options: o, .. } = &mut self.l3 {
            *o = options.to_vec();
        }
        self
    }

    pub fn frag(mut self, field: u16) -> Self {
        if let L3::V4 { frag, .. } = &mut self.l3 {
            *frag = field;
        }
        self
    }

    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// `n` zero bytes of payload after the L4 header.
    pub fn pad(mut self, n: usize) -> Self {
        self.pad = n;
        self
    }

    pub fn ext(mut self, header: u8) -> Self {
        if let L3::V6 { ext, .. } = &mut self.l3 {
            *ext = Some(header);
        }
        self
    }

    /// The frame's bytes, as sent from the client to the load balancer.
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&LB_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        if let Some(id) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        let mut l4 = self.l4.bytes();
        l4.resize(l4.len() + self.pad, 0);
        match &self.l3 {
            L3::V4 {
                src,
                dst,
                options,
                frag,
            } => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + options.len() / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                let mut h = vec![(4 << 4) | ihl as u8, self.tos];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34]);
                h.extend_from_slice(&frag.to_be_bytes());
                h.extend_from_slice(&[64, self.l4.proto(), 0, 0]);
                h.extend_from_slice(&src.octets());
                h.extend_from_slice(&dst.octets());
                h.extend_from_slice(options);
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            L3::V6 { src, dst, ext } => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let ext_len = if ext.is_some() { 8 } else { 0 };
                f.extend_from_slice(&[0x60 | self.tos >> 4, self.tos << 4, 0, 0]);
                f.extend_from_slice(&((l4.len() + ext_len) as u16).to_be_bytes());
                f.push(ext.unwrap_or(self.l4.proto()));
                f.push(64);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                if ext.is_some() {
                    f.extend_from_slice(&[self.l4.proto(), 0, 0, 0, 0, 0, 0, 0]);
                }
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// The flow key the XDP program builds for `frame` (as in `xlb_flows` and the flow hash).
pub fn flow_key(frame: &Frame) -> FlowKey {
    let mut key = FlowKey {
        proto: frame.l4.proto(),
        ..FlowKey::default()
    };
    match &frame.l3 {
        L3::V4 { src, dst, .. } => {
            key.family = FAMILY_V4;
            key.src[..4].copy_from_slice(&src.octets());
            key.dst[..4].copy_from_slice(&dst.octets());
        }
        L3::V6 { src, dst, .. } => {
            key.family = FAMILY_V6;
            key.src = src.octets();
            key.dst = dst.octets();
        }
    }
    if let L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } = frame.l4 {
        key.sport_be = sport.to_be();
        key.dport_be = dport.to_be();
    }
    key
}
