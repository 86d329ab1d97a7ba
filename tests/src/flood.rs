//! A SYN flood from spoofed sources: raw Ethernet frames written to a client
//! namespace's eth0 through an AF_PACKET socket, so no socket state and no handshake on
//! the sending side, as from a flooding host. Bounded in count and time; the sources are
//! 198.19.0.0/16 (inside the lab's 198.18.0.0/15, on no interface, so nothing answers
//! them).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::{
    packet::{SYN, tcp, v4},
    topology::{in_ns, mac_of},
};

/// Flow `i` of the flood: a source address and port, distinct for every `i` below 2^24.
fn source(i: u32) -> (Ipv4Addr, u16) {
    let addr = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
    (addr, 1024 + (i >> 16) as u16)
}

/// Sends `count` SYNs to `vip:port` from namespace `ns` (out of its eth0, to `lb_mac`),
/// flow `first + k` for the k-th; stops at `within`. Returns how many were sent.
pub fn syn_flood(
    ns: &str,
    lb_mac: [u8; 6],
    vip: Ipv4Addr,
    port: u16,
    (first, count): (u32, u32),
    within: Duration,
) -> u32 {
    let own = mac_of(ns, "eth0");
    let vip = vip.to_string();
    in_ns(ns, move || {
        // SAFETY: plain socket(2); the descriptor is closed below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new("eth0").expect("no NUL");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no eth0 in the namespace");
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex.cast_signed();
        // SAFETY: `addr` is a sockaddr_ll of the size given.
        let bound = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + within;
        let mut sent = 0;
        for k in 0..count {
            if Instant::now() >= deadline {
                break;
            }
            let (src, sport) = source(first + k);
            let mut frame = v4(&src.to_string(), &vip, tcp(sport, port, SYN)).bytes();
            frame[..6].copy_from_slice(&lb_mac);
            frame[6..12].copy_from_slice(&own);
            // SAFETY: a bound socket and a buffer of the length given.
            let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
            if n == frame.len().cast_signed() {
                sent += 1;
            }
        }
        // SAFETY: the descriptor opened above.
        unsafe { libc::close(fd) };
        sent
    })
}
