//! [`Shape`]: the set of subnets a pool pattern stands for, as arithmetic.
//!
//! A pattern such as `172.[128-255].[0-255].0/24`, or a CIDR pool such as
//! `fd00:6b69::/48 as /64`, is a product of ranges over bit fields of the
//! address: fixed bits, plus fields (an octet, or the bits between a pool's
//! prefix and its split length) that each take a range of values. That makes
//! index <-> subnet a mixed-radix conversion, lets the subnets of a pool that
//! meet a given network be found as one contiguous index range, and lets two
//! pools be tested for shared addresses without listing their subnets.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A pattern as arithmetic over its addresses (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    v6: bool,
    /// The fixed bits; zero in every field and in the host part.
    base: u128,
    /// The prefix length of every subnet of the shape.
    split: u8,
    /// The varying bit fields, most significant first, not overlapping.
    fields: Vec<Field>,
    /// How many subnets the shape holds: the product of the fields' sizes.
    count: u128,
}

/// Bits `shift..shift + width` of the address, taking the values `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Field {
    shift: u8,
    width: u8,
    lo: u128,
    hi: u128,
    /// How many subnets one step of this field spans in index space.
    stride: u128,
}

impl Field {
    fn size(&self) -> u128 {
        self.hi - self.lo + 1
    }
}

/// A bit field of a shape under construction: `(shift, width, lo, hi)`.
pub(crate) type FieldSpec = (u8, u8, u128, u128);

impl Shape {
    /// A shape from its fixed bits and its fields (most significant first).
    ///
    /// The caller keeps the fields inside the network part, disjoint, with
    /// `lo <= hi < 2^width`, and the product of their sizes within `u128`.
    pub(crate) fn new(v6: bool, base: u128, split: u8, fields: &[FieldSpec]) -> Self {
        let mut stride = 1u128;
        let mut built = Vec::with_capacity(fields.len());
        for &(shift, width, lo, hi) in fields.iter().rev() {
            debug_assert!(lo <= hi && hi <= low_mask(width));
            built.push(Field {
                shift,
                width,
                lo,
                hi,
                stride,
            });
            stride *= hi - lo + 1;
        }
        built.reverse();
        let field_bits = built
            .iter()
            .fold(0, |acc, f| acc | (low_mask(f.width) << f.shift));
        let bits = if v6 { 128 } else { 32 };
        Self {
            v6,
            base: base & network_mask(bits, split) & !field_bits,
            split,
            fields: built,
            count: stride,
        }
    }

    /// The shape holding exactly `net`.
    #[cfg(test)]
    pub(crate) fn of_net(net: &IpNet) -> Self {
        let (v6, address, prefix) = net_parts(net);
        Self::new(v6, address, prefix, &[])
    }

    fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    /// How many subnets the shape holds.
    pub(crate) fn count(&self) -> u128 {
        self.count
    }

    /// Whether its subnets are IPv6.
    pub(crate) fn is_v6(&self) -> bool {
        self.v6
    }

    /// The subnet at `index` (`index < count`), in address order.
    pub(crate) fn subnet(&self, index: u128) -> IpNet {
        debug_assert!(index < self.count);
        let mut address = self.base;
        // Strides and sizes are at most the count: when that fits 64 bits,
        // divide in 64 bits (128-bit division is a slow library call).
        let narrow = u64::try_from(self.count).is_ok();
        for field in &self.fields {
            let digit = if narrow {
                u128::from(index as u64 / field.stride as u64 % field.size() as u64)
            } else {
                index / field.stride % field.size()
            };
            address |= (field.lo + digit) << field.shift;
        }
        to_net(self.v6, address, self.split)
    }

    /// The indices of the subnets that share addresses with `net`: always
    /// one contiguous range (see below), or `None`.
    ///
    /// Why contiguous: `net` fixes the top `m` bits of an address. Fields
    /// wholly inside those bits take one value, at most one field straddles
    /// the boundary (a sub-range of its values) and the fields below are
    /// free. In mixed radix, fixed leading digits, one ranged digit and free
    /// trailing digits make one run of indices.
    pub(crate) fn index_range(&self, net: &IpNet) -> Option<(u128, u128)> {
        let (v6, address, prefix) = net_parts(net);
        if v6 != self.v6 {
            return None;
        }
        let bits = self.bits();
        let cut = bits - prefix.min(self.split);
        let fixed = network_mask(bits, self.split)
            & !low_mask(cut)
            & !self
                .fields
                .iter()
                .fold(0, |acc, f| acc | (low_mask(f.width) << f.shift));
        if (self.base ^ address) & fixed != 0 {
            return None;
        }
        let (mut first, mut last) = (0, 0);
        for field in &self.fields {
            let (lo, hi) = if field.shift >= cut {
                let value = (address >> field.shift) & low_mask(field.width);
                (value, value)
            } else if field.shift + field.width <= cut {
                (field.lo, field.hi)
            } else {
                let free = cut - field.shift;
                let top = ((address >> cut) & low_mask(field.width - free)) << free;
                (top, top | low_mask(free))
            };
            let (lo, hi) = (lo.max(field.lo), hi.min(field.hi));
            if lo > hi {
                return None;
            }
            first += (lo - field.lo) * field.stride;
            last += (hi - field.lo) * field.stride;
        }
        Some((first, last))
    }

    /// The lowest and highest address any subnet of the shape covers.
    fn hull(&self) -> (u128, u128) {
        let (mut lo, mut hi) = (self.base, self.base);
        for field in &self.fields {
            lo |= field.lo << field.shift;
            hi |= field.hi << field.shift;
        }
        (lo, hi | low_mask(self.bits() - self.split))
    }

    /// Whether some address lies in a subnet of both shapes.
    ///
    /// A walk over the address bits from the top, tracking for each shape
    /// whether the bits chosen so far in its current field still equal that
    /// field's lower / upper bound (a digit DP): at most 16 states per bit.
    pub(crate) fn intersects(&self, other: &Shape) -> bool {
        if self.v6 != other.v6 {
            return false;
        }
        let ((a_lo, a_hi), (b_lo, b_hi)) = (self.hull(), other.hull());
        if a_hi < b_lo || b_hi < a_lo {
            return false;
        }
        // Bit s of `states` set: state s (two bits per shape) is reachable.
        let mut states: u16 = 1;
        for bit in (0..self.bits()).rev() {
            let (a, b) = (self.constraint(bit), other.constraint(bit));
            let mut next: u16 = 0;
            for state in (0..16u8).filter(|s| states & (1 << s) != 0) {
                for value in [false, true] {
                    let (Some(sa), Some(sb)) =
                        (a.step(state & 3, value), b.step(state >> 2, value))
                    else {
                        continue;
                    };
                    next |= 1 << (sa | (sb << 2));
                }
            }
            if next == 0 {
                return false;
            }
            states = next;
        }
        true
    }

    /// What the shape demands of address bit `bit` (0 = least significant).
    fn constraint(&self, bit: u8) -> Bit {
        if bit < self.bits() - self.split {
            return Bit::Free;
        }
        for field in &self.fields {
            if (field.shift..field.shift + field.width).contains(&bit) {
                let offset = bit - field.shift;
                return Bit::Field {
                    lo: (field.lo >> offset) & 1 == 1,
                    hi: (field.hi >> offset) & 1 == 1,
                    top: offset == field.width - 1,
                };
            }
        }
        Bit::Fixed((self.base >> bit) & 1 == 1)
    }
}

/// One address bit as a shape constrains it.
#[derive(Debug, Clone, Copy)]
enum Bit {
    /// A host bit: anything.
    Free,
    /// A fixed network bit.
    Fixed(bool),
    /// A bit of a field whose bounds have bits `lo` and `hi` here; `top` for
    /// the field's most significant bit.
    Field { lo: bool, hi: bool, top: bool },
}

impl Bit {
    /// The next DP state (bit 0: still equal to the lower bound, bit 1:
    /// still equal to the upper bound) after choosing `value`, or `None` if
    /// the choice leaves the field's range.
    fn step(self, state: u8, value: bool) -> Option<u8> {
        match self {
            Self::Free => Some(state),
            Self::Fixed(fixed) => (fixed == value).then_some(state),
            Self::Field { lo, hi, top } => {
                let (at_lo, at_hi) = if top {
                    (true, true)
                } else {
                    (state & 1 != 0, state & 2 != 0)
                };
                if (at_lo && lo && !value) || (at_hi && !hi && value) {
                    return None;
                }
                Some(u8::from(at_lo && lo == value) | (u8::from(at_hi && hi == value) << 1))
            }
        }
    }
}

/// `(is IPv6, network address, prefix length)` of `net`.
pub(crate) fn net_parts(net: &IpNet) -> (bool, u128, u8) {
    match net {
        IpNet::V4(net) => (
            false,
            u128::from(u32::from(net.network())),
            net.prefix_len(),
        ),
        IpNet::V6(net) => (true, u128::from(net.network()), net.prefix_len()),
    }
}

/// The first and last address of `net`, as numbers.
#[cfg(test)]
fn net_span(net: &IpNet) -> (u128, u128) {
    let (v6, address, prefix) = net_parts(net);
    let bits = if v6 { 128 } else { 32 };
    (address, address | low_mask(bits - prefix))
}

/// The subnet `address/prefix` (the address has no host bits set).
pub(crate) fn to_net(v6: bool, address: u128, prefix: u8) -> IpNet {
    if v6 {
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from(address), prefix))
    } else {
        // An IPv4 shape keeps every bit below 2^32.
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(address as u32), prefix))
    }
}

/// The lowest `n` bits set.
pub(crate) fn low_mask(n: u8) -> u128 {
    if n >= 128 { u128::MAX } else { (1 << n) - 1 }
}

/// The top `prefix` of `bits` address bits set.
fn network_mask(bits: u8, prefix: u8) -> u128 {
    low_mask(bits) & !low_mask(bits - prefix)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn go_default() -> Shape {
        // 172.[128-255].[0-255].0/24
        Shape::new(false, 172 << 24, 24, &[(16, 8, 128, 255), (8, 8, 0, 255)])
    }

    #[test]
    fn subnets_come_in_address_order() {
        let shape = go_default();
        assert_eq!(shape.count(), 32_768);
        assert_eq!(shape.subnet(0), net("172.128.0.0/24"));
        assert_eq!(shape.subnet(1), net("172.128.1.0/24"));
        assert_eq!(shape.subnet(256), net("172.129.0.0/24"));
        assert_eq!(shape.subnet(32_767), net("172.255.255.0/24"));
    }

    #[test]
    fn index_ranges_of_larger_smaller_and_foreign_networks() {
        let shape = go_default();
        assert_eq!(shape.index_range(&net("172.129.5.0/24")), Some((261, 261)));
        assert_eq!(
            shape.index_range(&net("172.129.5.128/25")),
            Some((261, 261))
        );
        assert_eq!(shape.index_range(&net("172.129.0.0/16")), Some((256, 511)));
        assert_eq!(shape.index_range(&net("172.128.0.0/9")), Some((0, 32_767)));
        assert_eq!(shape.index_range(&net("172.0.0.0/8")), Some((0, 32_767)));
        assert_eq!(shape.index_range(&net("0.0.0.0/0")), Some((0, 32_767)));
        assert_eq!(
            shape.index_range(&net("172.144.0.0/12")),
            Some((16 * 256, 32 * 256 - 1))
        );
        assert_eq!(shape.index_range(&net("172.16.0.0/12")), None);
        assert_eq!(shape.index_range(&net("10.0.0.0/8")), None);
        assert_eq!(shape.index_range(&net("fd00::/8")), None);
    }

    #[test]
    fn wide_ipv6_fields_work() {
        // fd00::/8 as /64: 2^56 subnets.
        let shape = Shape::new(true, 0xfd << 120, 64, &[(64, 56, 0, low_mask(56))]);
        assert_eq!(shape.count(), 1 << 56);
        assert_eq!(shape.subnet(1), net("fd00:0:0:1::/64"));
        assert_eq!(shape.index_range(&net("fd00:0:0:1::/64")), Some((1, 1)));
        assert_eq!(
            shape.index_range(&net("fd00:0:1::/48")),
            Some((1 << 16, (2 << 16) - 1))
        );
        assert_eq!(shape.index_range(&net("::/0")), Some((0, (1 << 56) - 1)));
        assert!(shape.intersects(&Shape::of_net(&net("fd12::/16"))));
        assert!(!shape.intersects(&Shape::of_net(&net("fe00::/8"))));
    }

    #[test]
    fn intersection_sees_through_interleaved_patterns() {
        // 10.[0-255].1.0/24 and 10.[0-255].2.0/24 have overlapping hulls but
        // no common subnet; 10.[5-6].[0-3].0/24 meets the first.
        let ones = Shape::new(false, (10 << 24) | (1 << 8), 24, &[(16, 8, 0, 255)]);
        let twos = Shape::new(false, (10 << 24) | (2 << 8), 24, &[(16, 8, 0, 255)]);
        let block = Shape::new(false, 10 << 24, 24, &[(16, 8, 5, 6), (8, 8, 0, 3)]);
        assert!(!ones.intersects(&twos));
        assert!(ones.intersects(&block) && block.intersects(&twos));
        assert!(!block.intersects(&Shape::of_net(&net("10.7.0.0/16"))));
        assert!(block.intersects(&Shape::of_net(&net("10.6.3.128/25"))));
    }

    /// A small random IPv4 shape: fixed bits plus up to two ranged fields
    /// in the network part.
    fn small_shape() -> impl Strategy<Value = Shape> {
        (
            any::<u32>(),
            20u8..=28,
            0u8..3,
            0u32..8,
            0u32..8,
            0u32..4,
            0u32..4,
        )
            .prop_map(|(base, split, fields, a, b, c, d)| {
                let host = 32 - split;
                let mut specs = Vec::new();
                if fields >= 1 {
                    specs.push((host + 3, 3, u128::from(a.min(b)), u128::from(a.max(b))));
                }
                if fields >= 2 {
                    specs.push((host, 2, u128::from(c.min(d)), u128::from(c.max(d))));
                }
                // Keep every address inside 10.0.0.0/8's neighbourhood so
                // random shapes often meet.
                let base = (10 << 24) | (base & 0x0000_3fff);
                Shape::new(false, u128::from(base), split, &specs)
            })
    }

    fn spans(shape: &Shape) -> Vec<(u128, u128)> {
        (0..shape.count())
            .map(|i| net_span(&shape.subnet(i)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// `intersects` agrees with comparing the addresses one by one.
        #[test]
        fn intersects_matches_brute_force(a in small_shape(), b in small_shape()) {
            let (left, right) = (spans(&a), spans(&b));
            let meet = left.iter().any(|&(a1, a2)| right.iter().any(|&(b1, b2)| a1 <= b2 && b1 <= a2));
            prop_assert_eq!(a.intersects(&b), meet);
            prop_assert_eq!(b.intersects(&a), a.intersects(&b));
        }

        /// `index_range` finds exactly the subnets that meet a network.
        #[test]
        fn index_range_matches_brute_force(shape in small_shape(), address in any::<u32>(), prefix in 16u8..=32) {
            let probe = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from((10 << 24) | (address & 0x0000_3fff)), prefix).trunc());
            let meets: Vec<u128> = (0..shape.count())
                .filter(|&i| {
                    let subnet = shape.subnet(i);
                    subnet.contains(&probe.network()) || probe.contains(&subnet.network())
                })
                .collect();
            let expected = meets.first().map(|&first| (first, *meets.last().unwrap()));
            prop_assert_eq!(shape.index_range(&probe), expected);
            prop_assert_eq!(meets.len() as u128, expected.map_or(0, |(a, b)| b - a + 1), "contiguous");
            prop_assert_eq!(shape.intersects(&Shape::of_net(&probe)), expected.is_some());
        }
    }
}
