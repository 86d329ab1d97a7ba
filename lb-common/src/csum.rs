//! Internet checksums (RFC 1071) for the headers the program writes: a fresh IPv4
//! header, an incremental update of one 16-bit word (RFC 1624), and the fold of a
//! 32-bit partial sum such as `bpf_csum_diff` returns. Userspace tests check the
//! program's output with the same functions' definitions.

/// Folds a sum of 16-bit words to 16 bits with end-around carry (not inverted).
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The sum of an address's 16-bit words (big-endian), IPv4 or IPv6 (`n` 4-byte words).
#[inline(always)]
pub const fn sum_addr<const N: usize>(a: &[u8; 16]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < N * 4 {
        sum += u16::from_be_bytes([a[i], a[i + 1]]) as u64;
        i += 2;
    }
    sum
}

/// The header checksum of a 20-byte IPv4 header without options, from its fields.
#[inline(always)]
pub const fn ipv4_header(
    tos: u8,
    tot_len: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> u16 {
    let sum = (0x4500 | tos as u64)
        + tot_len as u64
        + frag as u64
        + ((ttl as u64) << 8 | proto as u64)
        + sum_addr::<1>(src)
        + sum_addr::<1>(dst);
    !fold(sum)
}

/// A checksum after one 16-bit word it covers changed from `old` to `new` (RFC 1624,
/// eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u64 + !old as u64 + new as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of `bytes` the plain way (RFC 1071).
    fn full(bytes: &[u8]) -> u16 {
        let sum: u64 = bytes
            .chunks(2)
            .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        !fold(sum)
    }

    fn addr4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    #[test]
    fn ipv4_header_matches_the_checksum_over_the_bytes() {
        let (src, dst) = ([198, 18, 2, 2], [198, 18, 3, 11]);
        let mut h = [
            0x45, 0xb8, 0x05, 0xdc, 0, 0, 0x40, 0, 64, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = ipv4_header(0xb8, 1500, 0x4000, 64, 4, &addr4(src), &addr4(dst));
        assert_eq!(c, full(&h));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(full(&h), 0, "a header with its checksum sums to zero");
    }

    #[test]
    fn replace16_matches_a_full_recomputation() {
        let mut b = [0x08u8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xab, 0xcd];
        let before = full(&b);
        b[0] = 0;
        assert_eq!(replace16(before, 0x0800, 0x0000), full(&b));
        let before = full(&b);
        b[4] = 0xff;
        assert_eq!(replace16(before, 0x1234, 0xff34), full(&b));
    }

    #[test]
    fn fold_carries_around() {
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(0xffff_ffff_ffff), 0xffff);
        assert_eq!(fold(0x2_0001), 0x0003);
    }
}
