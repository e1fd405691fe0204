//! [`IntervalSet`]: a set of numbers below a bound, for the free, excluded
//! and held subnets of the subnet allocator (as indices) and the free ports
//! of the port pool.
//!
//! A 64-ary tree of bitmaps, materialized lazily: a subtree whose values are
//! all in the set, or all out of it, is one `Full` or `Empty` node, so
//! memory follows how fragmented the set is, never the size of the range (a
//! fresh pool of 2^64 subnets is one node). Finding the next member, adding
//! or removing one value are a walk down the tree: at most 12 levels for
//! 2^72 values, 3 for the 32,768 subnets of the default pool. Adding or
//! removing a range touches at most two paths plus whole children.
//!
//! Inner nodes that become uniform are not folded back at once but by a
//! sweep every so many changes (amortized O(1)): allocating and releasing
//! around the same place would otherwise build and drop a node each time.

/// Children per inner node, as a power of two.
const FANOUT_BITS: u32 = 6;

/// Changes between two sweeps, at least (more when the tree is larger, so
/// that sweeping stays amortized O(1) per change).
const SWEEP_EVERY: usize = 1024;

/// A set of `u128` values below a bound fixed at creation.
#[derive(Debug, Clone)]
pub(crate) struct IntervalSet {
    root: Node,
    /// The root's level: it covers `cap(level)` values.
    level: u8,
    /// Values are below this.
    bound: u128,
    /// How many values the set holds.
    len: u128,
    /// Changes left until the next sweep.
    until_sweep: usize,
}

/// A subtree covering `cap(level)` values. Leaves are kept canonical (no
/// `Bits(0)`, no `Bits(!0)`); an `Inner` whose children are all `Empty` or
/// all `Full` may linger until the next sweep.
#[derive(Debug, Clone)]
enum Node {
    /// No value of the subtree is in the set.
    Empty,
    /// Every value of the subtree is in the set.
    Full,
    /// A partial leaf (level 0): bit `i` set means value `i` is in the set.
    Bits(u64),
    /// A partial inner node (level 1 and up).
    Inner(Box<Inner>),
}

#[derive(Debug, Clone)]
struct Inner {
    children: [Node; 64],
    /// Bit `i`: child `i` holds some value.
    some: u64,
    /// Bit `i`: child `i` holds every value it covers.
    every: u64,
}

/// How many values a node at `level` covers.
fn cap(level: u8) -> u128 {
    1 << (FANOUT_BITS * (u32::from(level) + 1))
}

/// Which child of a node at `level` (1 and up) holds `value`, and where in
/// it: shifts and masks, as 128-bit division is a slow library call.
fn child_of(level: u8, value: u128) -> (usize, u128) {
    let shift = FANOUT_BITS * u32::from(level);
    ((value >> shift) as usize & 63, value & ((1 << shift) - 1))
}

/// Bits `lo..=hi` set.
fn bit_range(lo: u128, hi: u128) -> u64 {
    let upper = if hi >= 63 {
        u64::MAX
    } else {
        (1 << (hi + 1)) - 1
    };
    upper & !((1 << lo) - 1)
}

/// Bits above `index` set.
fn bits_after(index: usize) -> u64 {
    if index >= 63 {
        0
    } else {
        u64::MAX << (index + 1)
    }
}

impl Node {
    fn count(&self, level: u8) -> u128 {
        match self {
            Self::Empty => 0,
            Self::Full => cap(level),
            Self::Bits(bits) => u128::from(bits.count_ones()),
            Self::Inner(inner) => inner
                .children
                .iter()
                .map(|child| child.count(level - 1))
                .sum(),
        }
    }

    fn contains(&self, level: u8, value: u128) -> bool {
        match self {
            Self::Empty => false,
            Self::Full => true,
            Self::Bits(bits) => (bits >> value) & 1 == 1,
            Self::Inner(inner) => {
                let (index, offset) = child_of(level, value);
                inner.children[index].contains(level - 1, offset)
            }
        }
    }

    /// Puts `lo..=hi` (relative to the node) in the set or takes it out;
    /// returns how many values changed.
    fn set(&mut self, level: u8, lo: u128, hi: u128, member: bool) -> u128 {
        match self {
            Self::Full if member => return 0,
            Self::Empty if !member => return 0,
            _ => {}
        }
        let size = cap(level);
        if lo == 0 && hi == size - 1 {
            let before = self.count(level);
            *self = if member { Self::Full } else { Self::Empty };
            return if member { size - before } else { before };
        }
        if level == 0 {
            let bits = match self {
                Self::Bits(bits) => *bits,
                Self::Full => u64::MAX,
                Self::Empty | Self::Inner(_) => 0,
            };
            let range = bit_range(lo, hi);
            let new = if member { bits | range } else { bits & !range };
            *self = match new {
                0 => Self::Empty,
                u64::MAX => Self::Full,
                new => Self::Bits(new),
            };
            return u128::from((new ^ bits).count_ones());
        }
        let inner = self.expand();
        let child_cap = cap(level - 1);
        let ((first, first_offset), (last, last_offset)) =
            (child_of(level, lo), child_of(level, hi));
        let mut changed = 0;
        for index in first..=last {
            let child_lo = if index == first { first_offset } else { 0 };
            let child_hi = if index == last {
                last_offset
            } else {
                child_cap - 1
            };
            changed += inner.children[index].set(level - 1, child_lo, child_hi, member);
            inner.refresh(index);
        }
        changed
    }

    /// Folds uniform inner nodes into `Empty` or `Full`; returns how many
    /// inner nodes remain.
    fn sweep(&mut self) -> usize {
        let Self::Inner(inner) = self else {
            return 0;
        };
        let below: usize = inner.children.iter_mut().map(Self::sweep).sum();
        if inner.some == 0 {
            *self = Self::Empty;
            0
        } else if inner.every == u64::MAX {
            *self = Self::Full;
            0
        } else {
            below + 1
        }
    }

    /// [`Node::set`] for one value (the common case), without the range
    /// bookkeeping; returns whether it changed.
    fn put(&mut self, level: u8, value: u128, member: bool) -> bool {
        match self {
            Self::Full if member => return false,
            Self::Empty if !member => return false,
            _ => {}
        }
        if level == 0 {
            let bits = match self {
                Self::Bits(bits) => *bits,
                Self::Full => u64::MAX,
                Self::Empty | Self::Inner(_) => 0,
            };
            let new = if member {
                bits | (1 << value)
            } else {
                bits & !(1 << value)
            };
            *self = match new {
                0 => Self::Empty,
                u64::MAX => Self::Full,
                new => Self::Bits(new),
            };
            return new != bits;
        }
        let inner = self.expand();
        let (index, offset) = child_of(level, value);
        let changed = inner.children[index].put(level - 1, offset, member);
        inner.refresh(index);
        changed
    }

    /// This inner node, splitting a uniform one into 64 uniform children.
    fn expand(&mut self) -> &mut Inner {
        if !matches!(self, Self::Inner(_)) {
            let full = matches!(self, Self::Full);
            let mask = if full { u64::MAX } else { 0 };
            *self = Self::Inner(Box::new(Inner {
                children: std::array::from_fn(|_| if full { Self::Full } else { Self::Empty }),
                some: mask,
                every: mask,
            }));
        }
        match self {
            Self::Inner(inner) => inner,
            _ => unreachable!("expanded above"),
        }
    }

    /// The first value at or after `from` (relative) that is in the set
    /// (`member`) or out of it (`!member`).
    fn next(&self, level: u8, from: u128, member: bool) -> Option<u128> {
        match self {
            Self::Empty => (!member).then_some(from),
            Self::Full => member.then_some(from),
            Self::Bits(bits) => {
                let candidates = if member { *bits } else { !*bits } & (u64::MAX << from);
                (candidates != 0).then(|| u128::from(candidates.trailing_zeros()))
            }
            Self::Inner(inner) => {
                let child_cap = cap(level - 1);
                let (start, offset) = child_of(level, from);
                let mask = if member { inner.some } else { !inner.every };
                if (mask >> start) & 1 == 1
                    && let Some(found) = inner.children[start].next(level - 1, offset, member)
                {
                    return Some(start as u128 * child_cap + found);
                }
                let later = mask & bits_after(start);
                if later == 0 {
                    return None;
                }
                let index = later.trailing_zeros() as usize;
                let found = inner.children[index].next(level - 1, 0, member)?;
                Some(index as u128 * child_cap + found)
            }
        }
    }

    fn nodes(&self) -> usize {
        match self {
            Self::Inner(inner) => 1 + inner.children.iter().map(Self::nodes).sum::<usize>(),
            _ => 0,
        }
    }
}

impl Inner {
    fn refresh(&mut self, index: usize) {
        let bit = 1 << index;
        let (some, every) = match &self.children[index] {
            Node::Empty => (false, false),
            Node::Full => (true, true),
            Node::Bits(_) => (true, false),
            Node::Inner(inner) => (inner.some != 0, inner.every == u64::MAX),
        };
        self.some = if some {
            self.some | bit
        } else {
            self.some & !bit
        };
        self.every = if every {
            self.every | bit
        } else {
            self.every & !bit
        };
    }
}

impl IntervalSet {
    /// An empty set of values below `bound`.
    pub(crate) fn empty(bound: u128) -> Self {
        let mut level = 0;
        while cap(level) < bound {
            level += 1;
        }
        Self {
            root: Node::Empty,
            level,
            bound,
            len: 0,
            until_sweep: SWEEP_EVERY,
        }
    }

    /// The set of every value below `bound`.
    pub(crate) fn full(bound: u128) -> Self {
        let mut set = Self::empty(bound);
        if bound > 0 {
            set.insert(0, bound - 1);
        }
        set
    }

    /// How many values the set holds.
    pub(crate) fn len(&self) -> u128 {
        self.len
    }

    /// Whether `value` is in the set.
    pub(crate) fn contains(&self, value: u128) -> bool {
        value < self.bound && self.root.contains(self.level, value)
    }

    /// Adds `first..=last` (below the bound); returns how many values were
    /// not in the set yet.
    pub(crate) fn insert(&mut self, first: u128, last: u128) -> u128 {
        debug_assert!(first <= last && last < self.bound);
        let added = if first == last {
            u128::from(self.root.put(self.level, first, true))
        } else {
            self.root.set(self.level, first, last, true)
        };
        self.len += added;
        self.changed();
        added
    }

    /// Removes `first..=last` (below the bound); returns how many values
    /// were in the set.
    pub(crate) fn remove(&mut self, first: u128, last: u128) -> u128 {
        debug_assert!(first <= last && last < self.bound);
        let removed = if first == last {
            u128::from(self.root.put(self.level, first, false))
        } else {
            self.root.set(self.level, first, last, false)
        };
        self.len -= removed;
        self.changed();
        removed
    }

    /// Counts a change; sweeps when enough have accumulated.
    fn changed(&mut self) {
        self.until_sweep -= 1;
        if self.until_sweep == 0 {
            self.compact();
        }
    }

    /// Folds every uniform inner node now.
    pub(crate) fn compact(&mut self) {
        let remaining = self.root.sweep();
        self.until_sweep = SWEEP_EVERY.max(remaining);
    }

    /// The smallest value in the set at or after `from`.
    pub(crate) fn next_member(&self, from: u128) -> Option<u128> {
        if from >= self.bound {
            return None;
        }
        self.root.next(self.level, from, true)
    }

    /// Takes the smallest value at or after `from`, or, when there is none,
    /// the smallest value of all (next fit: values come out in order and
    /// wrap around).
    pub(crate) fn take_next(&mut self, from: u128) -> Option<u128> {
        let value = self.next_member(from).or_else(|| self.next_member(0))?;
        self.remove(value, value);
        Some(value)
    }

    /// The runs of consecutive members within `first..=last`, in order.
    pub(crate) fn overlapping(
        &self,
        first: u128,
        last: u128,
    ) -> impl Iterator<Item = (u128, u128)> + '_ {
        let mut at = first;
        std::iter::from_fn(move || {
            if at > last {
                return None;
            }
            let start = self.next_member(at).filter(|&start| start <= last)?;
            let end = match self.root.next(self.level, start, false) {
                Some(gap) => (gap - 1).min(last),
                None => last,
            };
            at = end + 1;
            Some((start, end))
        })
    }

    /// How many inner nodes the tree has materialized (its memory, in
    /// units of about 1 KiB).
    pub(crate) fn nodes(&self) -> usize {
        self.root.nodes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn values(set: &IntervalSet) -> BTreeSet<u128> {
        set.overlapping(0, set.bound - 1)
            .flat_map(|(a, b)| a..=b)
            .collect()
    }

    /// The tree is collapsed, its masks match its children, and `len`
    /// matches the values.
    fn check_invariants(set: &IntervalSet) {
        fn check(node: &Node, level: u8) {
            match node {
                Node::Bits(bits) => {
                    assert_eq!(level, 0, "bits above level 0");
                    assert!(*bits != 0 && *bits != u64::MAX, "uncollapsed leaf");
                }
                Node::Inner(inner) => {
                    assert!(level > 0, "inner node at level 0");
                    for (i, child) in inner.children.iter().enumerate() {
                        let count = child.count(level - 1);
                        assert_eq!((inner.some >> i) & 1 == 1, count > 0, "some bit {i}");
                        assert_eq!(
                            (inner.every >> i) & 1 == 1,
                            count == cap(level - 1),
                            "every bit {i}"
                        );
                        check(child, level - 1);
                    }
                }
                Node::Empty | Node::Full => {}
            }
        }
        check(&set.root, set.level);
        assert_eq!(
            set.root.count(set.level),
            set.len,
            "len is out of step with the tree"
        );
    }

    #[test]
    fn a_huge_range_is_one_node() {
        let bound = 1u128 << 72;
        let mut set = IntervalSet::full(bound);
        assert_eq!(set.len(), bound);
        assert_eq!(set.nodes(), 0, "a full tree is one Full node");
        assert_eq!(set.take_next(0), Some(0));
        assert_eq!(set.take_next(1 << 40), Some(1 << 40));
        assert_eq!(set.len(), bound - 2);
        // Two paths of one inner node per level, below the root.
        assert!(set.nodes() <= 2 * 12, "{} nodes", set.nodes());
        set.insert(0, 0);
        set.insert(1 << 40, 1 << 40);
        check_invariants(&set);
        set.compact();
        assert!(
            matches!(set.root, Node::Full),
            "giving values back folds the tree: {:?}",
            set.root
        );
        assert_eq!(set.nodes(), 0);
    }

    #[test]
    fn sweeps_keep_memory_to_the_busy_places() {
        let mut set = IntervalSet::full(1 << 40);
        // Next fit marches through the set, giving each value back.
        for i in 0..100_000 {
            assert_eq!(set.take_next(i), Some(i));
            set.insert(i, i);
        }
        assert!(set.nodes() <= 64, "{} nodes linger", set.nodes());
        set.compact();
        assert_eq!(set.nodes(), 1, "the root, which covers 2^42 values");
        assert_eq!(set.len(), 1 << 40);
    }

    #[test]
    fn take_next_wraps_around() {
        let mut set = IntervalSet::empty(100);
        set.insert(10, 12);
        assert_eq!(set.take_next(11), Some(11));
        assert_eq!(set.take_next(12), Some(12));
        assert_eq!(set.take_next(13), Some(10));
        assert_eq!(set.take_next(0), None);
        assert_eq!(set.take_next(500), None);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn insert_counts_new_values_and_runs_are_found() {
        let mut set = IntervalSet::empty(10_000);
        assert_eq!(set.insert(0, 0), 1);
        assert_eq!(set.insert(2, 2), 1);
        assert_eq!(set.insert(1, 1), 1);
        assert_eq!(set.insert(0, 5), 3);
        assert_eq!(set.insert(4000, 9999), 6000);
        assert_eq!(
            set.overlapping(0, 9999).collect::<Vec<_>>(),
            [(0, 5), (4000, 9999)]
        );
        assert_eq!(
            set.overlapping(3, 4100).collect::<Vec<_>>(),
            [(3, 5), (4000, 4100)]
        );
        assert_eq!(set.remove(3, 9000), 3 + 5001);
        assert_eq!(values(&set), (0..3).chain(9001..10_000).collect());
        check_invariants(&set);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, u128),
        Remove(u128, u128),
        Take(u128),
    }

    /// Operations over 0..5000 (two levels), mostly short ranges near each
    /// other so that leaves fill, split and collapse.
    fn op() -> impl Strategy<Value = Op> {
        let range = (0u128..5000, prop_oneof![3 => 0u128..70, 1 => 0u128..5000])
            .prop_map(|(first, len)| (first, (first + len).min(4999)));
        prop_oneof![
            range.clone().prop_map(|(a, b)| Op::Insert(a, b)),
            range.prop_map(|(a, b)| Op::Remove(a, b)),
            (0u128..5100).prop_map(Op::Take),
        ]
    }

    /// The runs of `true` in `model`.
    fn model_runs(model: &[bool], first: usize, last: usize) -> Vec<(u128, u128)> {
        let mut runs = Vec::new();
        let mut i = first;
        while i <= last {
            if model[i] {
                let start = i;
                while i < last && model[i + 1] {
                    i += 1;
                }
                runs.push((start as u128, i as u128));
            }
            i += 1;
        }
        runs
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every operation matches the same operation on a plain bit vector.
        #[test]
        fn matches_a_bit_vector(ops in proptest::collection::vec(op(), 1..60), sweep in any::<bool>()) {
            let mut set = IntervalSet::empty(5000);
            let mut model = vec![false; 5000];
            for op in ops {
                match op {
                    Op::Insert(a, b) => {
                        let slots = &mut model[a as usize..=b as usize];
                        let new = slots.iter().filter(|v| !**v).count() as u128;
                        slots.fill(true);
                        prop_assert_eq!(set.insert(a, b), new);
                    }
                    Op::Remove(a, b) => {
                        let slots = &mut model[a as usize..=b as usize];
                        let gone = slots.iter().filter(|v| **v).count() as u128;
                        slots.fill(false);
                        prop_assert_eq!(set.remove(a, b), gone);
                    }
                    Op::Take(from) => {
                        let from = (from as usize).min(5000);
                        let expected = (from..5000).chain(0..from).find(|&i| model[i]);
                        if let Some(v) = expected {
                            model[v] = false;
                        }
                        prop_assert_eq!(set.take_next(from as u128), expected.map(|v| v as u128));
                    }
                }
                check_invariants(&set);
                if sweep {
                    set.compact();
                    check_invariants(&set);
                }
                prop_assert_eq!(set.len(), model.iter().filter(|v| **v).count() as u128);
                prop_assert_eq!(set.overlapping(0, 4999).collect::<Vec<_>>(), model_runs(&model, 0, 4999));
                prop_assert_eq!(set.overlapping(100, 4000).collect::<Vec<_>>(), model_runs(&model, 100, 4000));
                for probe in [0usize, 63, 64, 4095, 4096, 4999] {
                    prop_assert_eq!(set.contains(probe as u128), model[probe]);
                }
                prop_assert!(!set.contains(5000));
            }
        }
    }
}
