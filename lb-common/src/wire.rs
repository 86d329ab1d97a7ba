//! Numbers of the wire formats the programs read and write (linux/if_ether.h,
//! linux/in.h): shared by the load balancer and the backends' decap program.

/// Length of an Ethernet header without a VLAN tag.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// IP protocol of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol of IPv4 in IP (`ipip` with IPv4 backends).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol (next header) of IPv6 in IP (`ipip` with IPv6 backends).
pub const PROTO_IPV6: u8 = 41;
/// IP protocol (next header) of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
