//! Subnet pools: the pattern grammar ([`PoolPattern`]) and lists of them
//! ([`SubnetPool`]), with overlap detection and the public-address-space
//! check.
//!
//! The grammar lives here, beside the config that names pools, so that
//! [`Config::validate`](crate::config::Config::validate) reports a bad pool
//! with every other problem; `kisara-net` re-exports it and builds its
//! allocator on it. Every error is an [`Error::Invalid`] for `"subnet
//! pool"` whose message names the pattern, the position (`octet 2`,
//! `prefix`, `split`, `address`, `pool 3` in a list, or `pattern` for the
//! whole of it) and the offending token.

mod shape;

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::Error;
use shape::{FieldSpec, Shape, low_mask};

/// What every pool error is about, as [`Error::Invalid`] names it.
const WHAT: &str = "subnet pool";

/// Kisara's default pool: 32,768 private /24s.
pub const DEFAULT_POOL: &str = "10.[128-255].[0-255].0/24";

/// The Go original's default pool: 32,768 /24s of **public** address space
/// (`172.128.0.0/9` lies outside the private `172.16.0.0/12`). It parses,
/// with a warning.
pub const GO_DEFAULT_POOL: &str = "172.[128-255].[0-255].0/24";

/// Longest pattern text accepted.
const MAX_PATTERN_LEN: usize = 256;
/// Longest pool list text accepted.
const MAX_LIST_LEN: usize = 16 * 1024;
/// Most pools a list may hold.
const MAX_POOLS: usize = 256;
/// Most bits a split may add to a prefix: at most 2^64 subnets per pool.
const MAX_SPLIT_BITS: u8 = 64;
/// What a CIDR pool without `as /N` is split into.
const DEFAULT_SPLIT_V4: u8 = 24;
const DEFAULT_SPLIT_V6: u8 = 64;

/// Private address space: a pool outside it draws a warning.
pub const PRIVATE_RANGES: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// One subnet pool: a Go-style pattern with octet ranges, or a CIDR pool
/// split into subnets of one prefix length.
///
/// | written | subnets |
/// |---|---|
/// | `10.[128-255].[0-255].0/24` | 32,768 /24s (each bracket ranges over one octet) |
/// | `10.[7].[0-15].0/24` | 16 /24s (`[7]` is a single value) |
/// | `10.0.0.0/8` | 65,536 /24s: an IPv4 CIDR pool is split into /24s ... |
/// | `10.0.0.0/12 as /20` | 256 /20s: ... unless it says `as /N` |
/// | `10.[0-3].0.0/16 as /24` | 1,024 /24s: ranges and a split combine |
/// | `fd00:6b69::/48` | 65,536 /64s: an IPv6 pool is split into /64s |
///
/// A CIDR pool already smaller than its default split is one subnet
/// (`10.1.2.0/26`). Ranges need whole octets inside the prefix, and fixed
/// octets may not set host bits. A pool splits into at most 2^64 subnets.
///
/// Parsing ([`FromStr`]) rejects malformed text with an [`Error::Invalid`]
/// naming the position and the token (`octet 2: range 128-300 exceeds
/// 255`). [`fmt::Display`] writes a pattern that parses back to an equal
/// one. Serialized as that string.
///
/// ```
/// use kisara_core::model::pool::PoolPattern;
///
/// let go: PoolPattern = "172.[128-255].[0-255].0/24".parse()?;
/// assert_eq!(go.count(), 32_768);
/// assert!(!go.is_private(), "172.128.0.0/9 is public address space");
/// assert_eq!(go.nth(257).unwrap().to_string(), "172.129.1.0/24");
///
/// let err = "172.[128-300].0.0/16".parse::<PoolPattern>().unwrap_err();
/// assert!(err.to_string().contains("octet 2: range 128-300 exceeds 255"), "{err}");
/// # Ok::<(), kisara_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolPattern {
    address: Address,
    /// The prefix length written after the address.
    prefix: u8,
    /// The prefix length of the subnets handed out.
    split: u8,
    shape: Shape,
}

/// The address part of a pattern, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Address {
    /// Four octets, each a value (`lo == hi`) or a range.
    V4([(u8, u8); 4]),
    /// An IPv6 network address.
    V6(Ipv6Addr),
}

impl PoolPattern {
    /// How many subnets the pool holds.
    pub fn count(&self) -> u128 {
        self.shape.count()
    }

    /// The prefix length of the subnets it hands out (`24` for
    /// `10.0.0.0/8`).
    pub fn subnet_prefix_len(&self) -> u8 {
        self.split
    }

    /// Whether it is an IPv6 pool.
    pub fn is_ipv6(&self) -> bool {
        self.shape.is_v6()
    }

    /// The subnet at `index` (0-based, in address order), if the pool has
    /// that many.
    pub fn nth(&self, index: u128) -> Option<IpNet> {
        (index < self.count()).then(|| self.shape.subnet(index))
    }

    /// The index of `subnet` if it is one of the pool's subnets.
    pub fn index_of(&self, subnet: &IpNet) -> Option<u128> {
        if subnet.prefix_len() != self.split || subnet.trunc() != *subnet {
            return None;
        }
        self.shape.index_range(subnet).map(|(first, _)| first)
    }

    /// Whether `subnet` is one of the pool's subnets.
    pub fn contains(&self, subnet: &IpNet) -> bool {
        self.index_of(subnet).is_some()
    }

    /// Whether some address lies in both pools.
    pub fn overlaps(&self, other: &PoolPattern) -> bool {
        self.shape.intersects(&other.shape)
    }

    /// Whether every subnet lies in private address space (10.0.0.0/8,
    /// 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7).
    pub fn is_private(&self) -> bool {
        let inside: u128 = PRIVATE_RANGES
            .iter()
            .filter_map(|text| text.parse::<IpNet>().ok())
            // A subnet larger than a private range cannot lie inside it.
            .filter(|range| range.prefix_len() <= self.split)
            .filter_map(|range| self.shape.index_range(&range))
            .map(|(first, last)| last - first + 1)
            .sum();
        inside == self.count()
    }

    /// The indices of the pool's subnets that share addresses with `net`
    /// (a network of any size): always one contiguous range `(first,
    /// last)`, or `None` when they share none.
    pub fn index_range(&self, net: &IpNet) -> Option<(u128, u128)> {
        self.shape.index_range(net)
    }

    /// The split a pattern written like this one gets without `as /N`.
    fn default_split(&self) -> u8 {
        default_split(self.address, self.prefix)
    }
}

fn default_split(address: Address, prefix: u8) -> u8 {
    match address {
        Address::V4(octets) if octets.iter().any(|(lo, hi)| lo < hi) => prefix,
        Address::V4(_) => prefix.max(DEFAULT_SPLIT_V4),
        Address::V6(_) => prefix.max(DEFAULT_SPLIT_V6),
    }
}

impl fmt::Display for PoolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Address::V4(octets) => {
                for (i, (lo, hi)) in octets.into_iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if lo == hi {
                        write!(f, "{lo}")?;
                    } else {
                        write!(f, "[{lo}-{hi}]")?;
                    }
                }
            }
            Address::V6(address) => write!(f, "{address}")?,
        }
        write!(f, "/{}", self.prefix)?;
        // `[7]` displays as `7`, which can change the default split: compare
        // against the default of the text as displayed.
        if self.split != self.default_split() {
            write!(f, " as /{}", self.split)?;
        }
        Ok(())
    }
}

impl FromStr for PoolPattern {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Parser { text }.pattern()
    }
}

impl TryFrom<String> for PoolPattern {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        text.parse()
    }
}

impl From<PoolPattern> for String {
    fn from(pattern: PoolPattern) -> Self {
        pattern.to_string()
    }
}

/// Parses one pattern, naming the position of every problem.
struct Parser<'a> {
    text: &'a str,
}

impl Parser<'_> {
    fn error(&self, position: impl Into<String>, message: impl Into<String>) -> Error {
        pattern_error(self.text, position, message)
    }

    fn pattern(&self) -> Result<PoolPattern, Error> {
        if self.text.len() > MAX_PATTERN_LEN {
            return Err(self.error(
                "pattern",
                format!(
                    "is {} bytes long; a pattern has at most {MAX_PATTERN_LEN}",
                    self.text.len()
                ),
            ));
        }
        let text = self.text.trim();
        if text.is_empty() {
            return Err(self.error("pattern", format!("is empty; write e.g. {DEFAULT_POOL}")));
        }
        // No address contains "as" (IPv6 digits stop at f).
        let (network, split) = match text.split_once("as") {
            Some((network, split)) => (network.trim(), Some(split.trim())),
            None => (text, None),
        };
        let Some((address, prefix)) = network.split_once('/') else {
            return Err(self.error(
                "prefix",
                format!(
                    "{network:?} has no prefix length; write e.g. {DEFAULT_POOL} or 10.0.0.0/8"
                ),
            ));
        };
        let address = address.trim();
        let (address, bits) = if address.contains(':') {
            (self.ipv6(address)?, 128)
        } else {
            (self.ipv4(address)?, 32)
        };
        let prefix = self.prefix_len("prefix", prefix, bits)?;
        let split = match split {
            Some(split) => {
                let value =
                    self.prefix_len("split", split.strip_prefix('/').unwrap_or(split), bits)?;
                if value < prefix {
                    return Err(self.error(
                        "split",
                        format!("/{value} is shorter than the /{prefix} prefix; subnets must fit in the pool"),
                    ));
                }
                value
            }
            // Any bracket, even `[7]`, makes it a Go-style pattern whose
            // prefix is the subnet size.
            None if network.contains('[') => prefix,
            None => default_split(address, prefix),
        };
        if split - prefix > MAX_SPLIT_BITS {
            return Err(self.error(
                "split",
                format!(
                    "/{prefix} as /{split} makes 2^{} subnets; a pool holds at most 2^{MAX_SPLIT_BITS}",
                    split - prefix
                ),
            ));
        }
        let shape = self.shape(address, prefix, split)?;
        Ok(PoolPattern {
            address,
            prefix,
            split,
            shape,
        })
    }

    fn ipv6(&self, text: &str) -> Result<Address, Error> {
        if text.contains('[') {
            return Err(self.error(
                "address",
                "ranges are only supported in IPv4 patterns; write an IPv6 pool as a CIDR such as fd00:6b69::/48 as /64",
            ));
        }
        text.parse()
            .map(Address::V6)
            .map_err(|_| self.error("address", format!("{text:?} is not an IPv6 address")))
    }

    fn ipv4(&self, text: &str) -> Result<Address, Error> {
        let parts: Vec<&str> = text.split('.').take(5).collect();
        if parts.len() != 4 {
            return Err(self.error(
                "address",
                format!("{text:?} is not four dot-separated octets such as 10.[128-255].[0-255].0"),
            ));
        }
        let mut octets = [(0, 0); 4];
        for (i, part) in parts.into_iter().enumerate() {
            octets[i] = self.octet(i, part.trim())?;
        }
        Ok(Address::V4(octets))
    }

    /// An octet: `N`, `[A-B]` or `[N]`.
    fn octet(&self, i: usize, token: &str) -> Result<(u8, u8), Error> {
        let position = format!("octet {}", i + 1);
        let Some(inner) = token.strip_prefix('[') else {
            let value = number(token)
                .ok_or_else(|| self.error(&position, format!("{token:?} is not a number 0-255")))?;
            let value = u8::try_from(value)
                .map_err(|_| self.error(&position, format!("{value} exceeds 255")))?;
            return Ok((value, value));
        };
        let Some(inner) = inner.strip_suffix(']') else {
            return Err(self.error(&position, format!("{token:?} has no closing bracket")));
        };
        let (lo, hi) = inner.split_once('-').unwrap_or((inner, inner));
        let (Some(lo), Some(hi)) = (number(lo.trim()), number(hi.trim())) else {
            return Err(self.error(
                &position,
                format!("{token:?} is not a range; write [a-b] or [a] with numbers 0-255"),
            ));
        };
        if lo > hi {
            return Err(self.error(
                &position,
                format!("range {lo}-{hi} is reversed; write [{hi}-{lo}]"),
            ));
        }
        match (u8::try_from(lo), u8::try_from(hi)) {
            (Ok(lo), Ok(hi)) => Ok((lo, hi)),
            _ => Err(self.error(&position, format!("range {lo}-{hi} exceeds 255"))),
        }
    }

    fn prefix_len(&self, position: &str, token: &str, bits: u8) -> Result<u8, Error> {
        let token = token.trim();
        match number(token) {
            Some(value) if value <= u64::from(bits) => Ok(value as u8),
            Some(value) => Err(self.error(position, format!("/{value} exceeds {bits}"))),
            None => Err(self.error(
                position,
                format!("{token:?} is not a prefix length 0-{bits}"),
            )),
        }
    }

    /// Checks the octets against the prefix and builds the arithmetic.
    fn shape(&self, address: Address, prefix: u8, split: u8) -> Result<Shape, Error> {
        let mut fields: Vec<FieldSpec> = Vec::new();
        let (v6, bits, base) = match address {
            Address::V6(address) => {
                let net = Ipv6Net::new_assert(address, prefix);
                if net.trunc().addr() != address {
                    return Err(self.error(
                        "address",
                        format!(
                            "{address}/{prefix} sets host bits; the network is {}",
                            net.trunc()
                        ),
                    ));
                }
                (true, 128, u128::from(address))
            }
            Address::V4(octets) => {
                let mut base = 0u128;
                for (i, (lo, hi)) in octets.into_iter().enumerate() {
                    let position = format!("octet {}", i + 1);
                    let shift = 24 - 8 * i as u8;
                    // How many of this octet's bits belong to the prefix.
                    let network_bits = prefix.saturating_sub(8 * i as u8).min(8);
                    if lo < hi {
                        if network_bits < 8 {
                            return Err(self.error(
                                &position,
                                format!(
                                    "range {lo}-{hi} needs the whole octet inside the /{prefix} prefix; \
                                     for other sizes write a CIDR pool such as 10.0.0.0/12 as /20"
                                ),
                            ));
                        }
                        fields.push((shift, 8, u128::from(lo), u128::from(hi)));
                    } else {
                        if u128::from(lo) & low_mask(8 - network_bits) != 0 {
                            return Err(self.error(
                                &position,
                                format!("{lo} sets host bits of the /{prefix} prefix"),
                            ));
                        }
                        base |= u128::from(lo) << shift;
                    }
                }
                (false, 32, base)
            }
        };
        if split > prefix {
            fields.push((bits - split, split - prefix, 0, low_mask(split - prefix)));
        }
        // Keep fields most significant first (the split field is lowest).
        debug_assert!(fields.windows(2).all(|w| w[0].0 > w[1].0));
        Ok(Shape::new(v6, base, split, &fields))
    }
}

/// A decimal number of at most 10 digits (so it fits and the error can show
/// it), or `None`.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An ordered list of disjoint [`PoolPattern`]s: the whole address space an
/// allocator hands subnets out of, the first pool first.
///
/// Written as a comma-separated list (`10.[128-255].[0-255].0/24,
/// fd00:6b69::/48`); serialized as a list of pattern strings. Pools that
/// share addresses are an [`Error::Invalid`] naming both; pools in public address space
/// are accepted, with a [`SubnetPool::warnings`] entry (the allocator also
/// logs it).
///
/// ```
/// use kisara_core::model::pool::SubnetPool;
///
/// let pool: SubnetPool = "10.[128-255].[0-255].0/24, fd00:6b69::/48".parse()?;
/// assert_eq!(pool.total(), 32_768 + 65_536);
/// assert!(pool.warnings().is_empty());
///
/// let err = "10.0.0.0/8, 10.[128-255].[0-255].0/24".parse::<SubnetPool>().unwrap_err();
/// assert!(err.to_string().contains("overlaps"), "{err}");
/// # Ok::<(), kisara_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<PoolPattern>", into = "Vec<PoolPattern>")]
pub struct SubnetPool {
    patterns: Vec<PoolPattern>,
}

impl SubnetPool {
    /// A pool of `patterns`, checked: at least one, at most 256, disjoint.
    pub fn new(patterns: impl IntoIterator<Item = PoolPattern>) -> Result<Self, Error> {
        let patterns: Vec<PoolPattern> = patterns.into_iter().take(MAX_POOLS + 1).collect();
        if patterns.is_empty() {
            return Err(Error::invalid(
                WHAT,
                format!("no pools; list at least one, e.g. {DEFAULT_POOL}"),
            ));
        }
        if patterns.len() > MAX_POOLS {
            return Err(Error::invalid(WHAT, format!("more than {MAX_POOLS} pools")));
        }
        if let Some((first, second)) = overlapping_pair(&patterns) {
            return Err(Error::invalid(
                WHAT,
                overlap_message(&patterns[first], &patterns[second]),
            ));
        }
        Ok(Self { patterns })
    }

    /// Parses each item as one pattern (as a config file lists them).
    pub fn parse_list<I>(items: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let patterns = items
            .into_iter()
            .take(MAX_POOLS + 1)
            .map(|item| item.as_ref().parse())
            .collect::<Result<Vec<PoolPattern>, Error>>()?;
        Self::new(patterns)
    }

    /// The pools, in the order they are used.
    pub fn patterns(&self) -> &[PoolPattern] {
        &self.patterns
    }

    /// How many subnets the pools hold together.
    pub fn total(&self) -> u128 {
        self.patterns.iter().map(PoolPattern::count).sum()
    }

    /// Whether every pool lies in private address space.
    pub fn is_private(&self) -> bool {
        self.patterns.iter().all(PoolPattern::is_private)
    }

    /// One sentence per pool that reaches into public address space (empty
    /// when all are private), for config validation to show.
    pub fn warnings(&self) -> Vec<String> {
        self.patterns
            .iter()
            .filter(|pattern| !pattern.is_private())
            .map(|pattern| {
                format!(
                    "pool {pattern} reaches into public address space (outside {}); \
                     its networks may shadow real hosts",
                    PRIVATE_RANGES.join(", ")
                )
            })
            .collect()
    }
}

impl Default for SubnetPool {
    /// One pool: [`DEFAULT_POOL`].
    fn default() -> Self {
        Self::parse_list([DEFAULT_POOL]).expect("the default pool parses")
    }
}

impl fmt::Display for SubnetPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pattern) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{pattern}")?;
        }
        Ok(())
    }
}

impl FromStr for SubnetPool {
    type Err = Error;

    /// A comma-separated list of patterns.
    fn from_str(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_LIST_LEN {
            return Err(Error::invalid(
                WHAT,
                format!(
                    "the list is {} bytes long; at most {MAX_LIST_LEN}",
                    text.len()
                ),
            ));
        }
        let items: Vec<&str> = text.split(',').collect();
        if items.len() > 1
            && let Some(empty) = items.iter().position(|item| item.trim().is_empty())
        {
            return Err(pattern_error(
                text,
                format!("pool {}", empty + 1),
                "is empty",
            ));
        }
        Self::parse_list(items)
    }
}

/// The first pair `(earlier, later)` of `patterns` that share addresses,
/// by the position of the later one.
pub(crate) fn overlapping_pair(patterns: &[PoolPattern]) -> Option<(usize, usize)> {
    patterns.iter().enumerate().find_map(|(i, later)| {
        let earlier = patterns[..i]
            .iter()
            .position(|earlier| earlier.overlaps(later))?;
        Some((earlier, i))
    })
}

/// What is wrong when `later` shares addresses with `earlier`.
pub(crate) fn overlap_message(earlier: &PoolPattern, later: &PoolPattern) -> String {
    format!("pool {later} overlaps pool {earlier}; pools must be disjoint")
}

/// A malformed pattern: the pattern (cut to [`crate::EXCERPT_CHARS`] characters),
/// where in it, and what is wrong, naming the offending token.
fn pattern_error(pattern: &str, position: impl Into<String>, message: impl Into<String>) -> Error {
    Error::invalid(
        WHAT,
        format!(
            "pool pattern {:?}: {}: {}",
            crate::excerpt(pattern),
            position.into(),
            message.into()
        ),
    )
}

impl TryFrom<Vec<PoolPattern>> for SubnetPool {
    type Error = Error;
    fn try_from(patterns: Vec<PoolPattern>) -> Result<Self, Error> {
        Self::new(patterns)
    }
}

impl From<SubnetPool> for Vec<PoolPattern> {
    fn from(pool: SubnetPool) -> Self {
        pool.patterns
    }
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv4Net;
    use proptest::prelude::*;

    use super::*;

    fn v4(text: &str) -> IpNet {
        IpNet::V4(text.parse::<Ipv4Net>().unwrap())
    }

    fn parse(text: &str) -> PoolPattern {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    fn error(text: &str) -> String {
        text.parse::<PoolPattern>().unwrap_err().to_string()
    }

    #[test]
    fn go_default_counts_32768_and_is_public() {
        let go = parse(GO_DEFAULT_POOL);
        assert_eq!(go.count(), 32_768);
        assert!(!go.is_private());
        assert_eq!(go.nth(0), Some(v4("172.128.0.0/24")));
        assert_eq!(go.nth(32_767), Some(v4("172.255.255.0/24")));
        assert_eq!(go.nth(32_768), None);
        let kisara = parse(DEFAULT_POOL);
        assert_eq!(kisara.count(), 32_768);
        assert!(kisara.is_private());
        let pool = SubnetPool::parse_list([GO_DEFAULT_POOL]).unwrap();
        let warnings = pool.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("172.[128-255].[0-255].0/24") && warnings[0].contains("public"),
            "{warnings:?}"
        );
        assert!(SubnetPool::default().warnings().is_empty());
    }

    #[test]
    fn shapes_of_the_documented_forms() {
        for (text, count, first, last) in [
            ("10.[7].[0-15].0/24", 16, "10.7.0.0/24", "10.7.15.0/24"),
            ("10.0.0.0/8", 65_536, "10.0.0.0/24", "10.255.255.0/24"),
            ("10.0.0.0/12 as /20", 256, "10.0.0.0/20", "10.15.240.0/20"),
            (
                "10.[0-3].0.0/16 as /24",
                1024,
                "10.0.0.0/24",
                "10.3.255.0/24",
            ),
            ("10.1.2.0/26", 1, "10.1.2.0/26", "10.1.2.0/26"),
            (
                " 192.168.[0-255].0 / 24 ",
                256,
                "192.168.0.0/24",
                "192.168.255.0/24",
            ),
            ("10.[ 1 - 2 ].0.0/16", 2, "10.1.0.0/16", "10.2.0.0/16"),
            (
                "fd00:6b69::/48",
                65_536,
                "fd00:6b69::/64",
                "fd00:6b69:0:ffff::/64",
            ),
            (
                "fd00::/8 as /64",
                1 << 56,
                "fd00::/64",
                "fdff:ffff:ffff:ffff::/64",
            ),
            (
                "fd00:1::/64 as /120",
                1 << 56,
                "fd00:1::/120",
                "fd00:1::ffff:ffff:ffff:ff00/120",
            ),
        ] {
            let pattern = parse(text);
            assert_eq!(pattern.count(), count, "{text}");
            assert_eq!(pattern.nth(0).unwrap().to_string(), first, "{text}");
            assert_eq!(pattern.nth(count - 1).unwrap().to_string(), last, "{text}");
            assert!(pattern.is_private(), "{text}");
            assert_eq!(
                parse(&pattern.to_string()),
                pattern,
                "{text} displays as {pattern}"
            );
        }
    }

    #[test]
    fn display_is_canonical() {
        for (text, shown) in [
            ("10.[128-255].[0-255].0/24", "10.[128-255].[0-255].0/24"),
            ("10.0.0.0/8 as /24", "10.0.0.0/8"),
            ("10.0.0.0/8 as 26", "10.0.0.0/8 as /26"),
            ("10.[7].0.0/16", "10.7.0.0/16 as /16"),
            ("fd00:6b69:0::/48 as /64", "fd00:6b69::/48"),
        ] {
            assert_eq!(parse(text).to_string(), shown);
        }
    }

    #[test]
    fn errors_name_the_position_and_the_token() {
        for (text, needle) in [
            ("172.[128-300].0.0/16", "octet 2: range 128-300 exceeds 255"),
            (
                "172.[200-100].0.0/16",
                "octet 2: range 200-100 is reversed; write [100-200]",
            ),
            ("172.16.[1,2].0/24", "octet 3: \"[1,2]\" is not a range"),
            (
                "172.16.[1-2.0/24",
                "octet 3: \"[1-2\" has no closing bracket",
            ),
            ("172.16.x.0/24", "octet 3: \"x\" is not a number 0-255"),
            ("172.16.256.0/24", "octet 3: 256 exceeds 255"),
            (
                "172.16.0.5/24",
                "octet 4: 5 sets host bits of the /24 prefix",
            ),
            (
                "10.0.[0-255].0/20",
                "octet 3: range 0-255 needs the whole octet inside the /20 prefix",
            ),
            (
                "10.[0-3].[0-255].[0-255]/24",
                "octet 4: range 0-255 needs the whole octet",
            ),
            (
                "10.0.0/8",
                "address: \"10.0.0\" is not four dot-separated octets",
            ),
            ("10.0.0.0.0/8", "address: \"10.0.0.0.0\" is not four"),
            ("10.0.0.0", "prefix: \"10.0.0.0\" has no prefix length"),
            ("10.0.0.0/33", "prefix: /33 exceeds 32"),
            ("10.0.0.0/x", "prefix: \"x\" is not a prefix length 0-32"),
            (
                "10.0.0.0/8 as /4",
                "split: /4 is shorter than the /8 prefix",
            ),
            ("10.0.0.0/8 as /40", "split: /40 exceeds 32"),
            ("fd00::/8 as /128", "split: /8 as /128 makes 2^120 subnets"),
            (
                "fd00::1/64",
                "address: fd00::1/64 sets host bits; the network is fd00::/64",
            ),
            (
                "fd00::[1-2]/64",
                "ranges are only supported in IPv4 patterns",
            ),
            ("fd00:::/64", "address: \"fd00:::\" is not an IPv6 address"),
            ("", "pattern: is empty"),
            ("   ", "pattern: is empty"),
        ] {
            let err = error(text);
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let long = "1".repeat(10_000);
        let err = error(&long);
        assert!(
            err.contains("a pattern has at most 256") && err.len() < 300,
            "{err}"
        );
    }

    #[test]
    fn errors_are_invalid_subnet_pools_naming_the_token() {
        let err = "172.16.[1,2].0/24".parse::<PoolPattern>().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Invalid);
        assert_eq!(
            err.to_string(),
            "invalid subnet pool: pool pattern \"172.16.[1,2].0/24\": octet 3: \"[1,2]\" is not a range; \
             write [a-b] or [a] with numbers 0-255"
        );
        let long = format!("10.0.0.0/8, {}", "x".repeat(1000));
        let err = long.parse::<SubnetPool>().unwrap_err().to_string();
        assert!(err.contains("...") && err.len() < 400, "{err}");
    }

    #[test]
    fn lists_parse_reject_overlaps_and_empty_items() {
        let pool: SubnetPool = "10.[128-255].[0-255].0/24 , 10.0.0.0/9 as /16, fd00:6b69::/48"
            .parse()
            .unwrap();
        assert_eq!(pool.patterns().len(), 3);
        assert_eq!(pool.total(), 32_768 + 128 + 65_536);
        assert_eq!(
            pool.to_string(),
            "10.[128-255].[0-255].0/24, 10.0.0.0/9 as /16, fd00:6b69::/48"
        );
        assert_eq!(pool.to_string().parse::<SubnetPool>().unwrap(), pool);

        for (text, needle) in [
            (
                "10.0.0.0/8, 10.[128-255].[0-255].0/24",
                "pool 10.[128-255].[0-255].0/24 overlaps pool 10.0.0.0/8",
            ),
            ("10.1.0.0/16, 10.1.0.0/16", "overlaps"),
            ("10.[0-255].1.0/24, 10.5.[0-3].0/24", "overlaps"),
            ("fd00::/16, fd00:1::/32", "overlaps"),
            ("10.0.0.0/8,,192.168.0.0/16", "pool 2: is empty"),
            ("10.0.0.0/8,", "pool 2: is empty"),
            ("", "pattern: is empty"),
        ] {
            let err = text.parse::<SubnetPool>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        // Interleaved but disjoint patterns are fine.
        let pool: SubnetPool = "10.[0-255].1.0/24, 10.[0-255].2.0/24".parse().unwrap();
        assert_eq!(pool.total(), 512);
        assert!(SubnetPool::new([]).is_err());
    }

    #[test]
    fn membership_and_indices() {
        let pattern = parse("10.[200-203].[0-255].0/24");
        assert_eq!(pattern.index_of(&v4("10.201.3.0/24")), Some(259));
        assert_eq!(pattern.index_of(&v4("10.201.3.0/25")), None);
        assert_eq!(pattern.index_of(&v4("10.204.3.0/24")), None);
        assert!(pattern.contains(&v4("10.203.255.0/24")));
        let mixed = parse("100.[64-127].0.0/16");
        assert!(mixed.is_private());
        assert!(
            !parse("100.[63-64].0.0/16").is_private(),
            "100.63.0.0/16 is public"
        );
        assert!(!parse("0.0.0.0/0 as /8").is_private());
        assert!(!parse("2001:db8::/32").is_private());
    }

    #[test]
    fn serde_uses_the_text_forms() {
        let pool: SubnetPool =
            serde_json::from_str(r#"["10.[128-255].[0-255].0/24", "fd00::/48"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&pool).unwrap(),
            r#"["10.[128-255].[0-255].0/24","fd00::/48"]"#
        );
        let err =
            serde_json::from_str::<SubnetPool>(r#"["10.0.0.0/8", "10.0.0.0/16"]"#).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        let err = serde_json::from_str::<PoolPattern>(r#""10.[1-999].0.0/16""#).unwrap_err();
        assert!(err.to_string().contains("octet 2"), "{err}");
    }

    /// A random valid IPv4 pattern: each octet inside the prefix a value or
    /// a range, the octet the prefix cuts a value without host bits, the
    /// rest 0, and sometimes a split.
    fn ipv4_pattern() -> impl Strategy<Value = String> {
        (
            0u8..=32,
            proptest::array::uniform4((any::<u8>(), any::<u8>(), any::<bool>())),
            0u8..=8,
            any::<bool>(),
        )
            .prop_map(|(prefix, octets, extra, bracket_single)| {
                let mut parts = Vec::new();
                for (i, (a, b, ranged)) in octets.into_iter().enumerate() {
                    let network_bits = prefix.saturating_sub(8 * i as u8).min(8);
                    let part = if network_bits == 8 && ranged {
                        format!("[{}-{}]", a.min(b), a.max(b))
                    } else if network_bits == 8 && bracket_single {
                        format!("[{a}]")
                    } else {
                        let host = 8 - network_bits;
                        let value = if host == 8 { 0 } else { (a >> host) << host };
                        value.to_string()
                    };
                    parts.push(part);
                }
                let split = (prefix + extra).min(32);
                format!("{}/{prefix} as /{split}", parts.join("."))
            })
    }

    fn ipv6_pattern() -> impl Strategy<Value = String> {
        (any::<u128>(), 0u8..=128, 0u8..=64).prop_map(|(address, prefix, extra)| {
            let net = Ipv6Net::new_assert(Ipv6Addr::from(address), prefix).trunc();
            format!("{net} as /{}", prefix.saturating_add(extra).min(128))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Display parses back to an equal pattern, and displays the same.
        #[test]
        fn display_round_trips(text in prop_oneof![ipv4_pattern(), ipv6_pattern()]) {
            let pattern = parse(&text);
            let shown = pattern.to_string();
            let again = parse(&shown);
            prop_assert_eq!(&again, &pattern, "{} -> {}", text, shown);
            prop_assert_eq!(again.to_string(), shown);
            // First and last subnets map back to their indices.
            let last = pattern.count() - 1;
            prop_assert_eq!(pattern.index_of(&pattern.nth(0).unwrap()), Some(0));
            prop_assert_eq!(pattern.index_of(&pattern.nth(last).unwrap()), Some(last));
        }

        /// Pool lists round-trip too.
        #[test]
        fn pool_lists_round_trip(a in ipv4_pattern(), b in ipv6_pattern()) {
            let pool = SubnetPool::parse_list([&a, &b]).unwrap();
            prop_assert_eq!(pool.to_string().parse::<SubnetPool>().unwrap(), pool);
        }
    }
}
