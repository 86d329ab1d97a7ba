//! The flow hash and the table slot index: the only inputs to backend selection for a
//! new flow. Both sides call these functions, so `xlb explain` and table fingerprints in
//! userspace predict the kernel exactly.
//!
//! The hash is MurmurHash3's 32-bit block mix and finaliser over the 5-tuple words. It
//! only needs to spread flows evenly over table slots (the seed keeps outsiders from
//! aiming many flows at one slot), and it must be cheap for the verifier and the CPU:
//! IPv4 keys hash 4 words, IPv6 keys 10.

use crate::{
    maps::VIP_FILTER_BITS,
    types::{FAMILY_V6, FlowKey},
};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Word `i` (0..4) of an address, as the hash mixes it and as `Backend::serves`
/// compares it.
#[inline(always)]
pub const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// Hash of a flow's 5-tuple under `seed`. Ports are taken as they appear in the packet.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.dst, 0));
    let mut n = 4u32;
    if key.family == FAMILY_V6 {
        let mut i = 1;
        while i < 4 {
            h = mix(h, word(&key.src, i));
            h = mix(h, word(&key.dst, i));
            i += 1;
        }
        n = 10;
    }
    h = mix(h, u32::from(key.sport_be) | (u32::from(key.dport_be) << 16));
    h = mix(h, u32::from(key.proto) | (u32::from(key.family) << 8));
    finish(h ^ (n * 4))
}

/// Seed of [`vip_filter_bit`]; a constant, as the bit only has to spread VIPs apart.
const FILTER_SEED: u32 = 0x7869_6c62;

/// The bit of `xlb_vip_filter` that traffic to (`addr`, `port_be`, `proto`, `family`)
/// tests. Userspace sets the bit of every VIP before the VIP goes live; the program
/// passes a packet whose bit is clear without any hash-map lookup.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16], port_be: u16, proto: u8, family: u8) -> u32 {
    let mut h = mix(FILTER_SEED, word(addr, 0));
    if family == FAMILY_V6 {
        let mut i = 1;
        while i < 4 {
            h = mix(h, word(addr, i));
            i += 1;
        }
    }
    h = mix(
        h,
        u32::from(port_be) | (u32::from(proto) << 16) | (u32::from(family) << 24),
    );
    finish(h) % VIP_FILTER_BITS
}

/// The table slot a new flow with hash `hash` takes in a table of `size` slots
/// (`size` > 0; the program checks that before calling).
#[inline(always)]
pub const fn table_slot(hash: u32, size: u32) -> u32 {
    hash % size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FAMILY_V4, PROTO_TCP};

    fn v4(src: [u8; 4], sport: u16) -> FlowKey {
        let mut k = FlowKey {
            dport_be: 80u16.to_be(),
            sport_be: sport.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&[198, 18, 0, 10]);
        k
    }

    #[test]
    fn known_answer_is_stable() {
        // Fleets rely on every host computing the same slot: this value must never change
        // without a deliberate, documented migration.
        assert_eq!(flow_hash(&v4([198, 18, 1, 2], 40000), 0), 0xa8d5_19a7);
    }

    #[test]
    fn seed_and_each_field_change_the_hash() {
        let base = v4([198, 18, 1, 2], 40000);
        let h = flow_hash(&base, 7);
        assert_ne!(h, flow_hash(&base, 8));
        assert_ne!(h, flow_hash(&v4([198, 18, 1, 3], 40000), 7));
        assert_ne!(h, flow_hash(&v4([198, 18, 1, 2], 40001), 7));
        let mut other_proto = base;
        other_proto.proto = 17;
        assert_ne!(h, flow_hash(&other_proto, 7));
    }

    #[test]
    fn vip_filter_bit_is_stable_and_spreads_vips() {
        // Userspace and the program must agree on every bit; pin one value.
        let v4 = |last: u8, port: u16| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[198, 18, 0, last]);
            vip_filter_bit(&a, port.to_be(), PROTO_TCP, FAMILY_V4)
        };
        assert_eq!(v4(10, 80), 21981);
        assert_ne!(v4(10, 80), v4(10, 443));
        assert_ne!(v4(10, 80), v4(11, 80));
        // 1023 VIPs (the most the maps hold) on consecutive ports of one address: few
        // share a bit, so a packet to a non-VIP rarely passes the filter.
        let mut seen = [false; VIP_FILTER_BITS as usize];
        let mut shared = 0;
        for port in 1..1024u16 {
            let bit = v4(10, port) as usize;
            shared += usize::from(seen[bit]);
            seen[bit] = true;
        }
        assert!(shared < 20, "{shared} of 1023 VIPs share a bit");
    }

    #[test]
    fn spreads_sequential_ports_evenly() {
        // 65536 client ports over 16 buckets: each bucket within 5 % of its mean.
        let mut buckets = [0u32; 16];
        for port in 0..=u16::MAX {
            let h = flow_hash(&v4([198, 18, 1, 2], port), 1);
            buckets[table_slot(h, 16) as usize] += 1;
        }
        for b in buckets {
            assert!((3891..=4301).contains(&b), "bucket has {b}");
        }
    }
}
