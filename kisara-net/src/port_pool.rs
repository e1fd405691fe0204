//! [`PortPool`]: the public ports a relay hands out.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use kisara_core::config::{DEFAULT_PORT_RANGE, PortRange};
use kisara_core::sync::lock;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::intervals::IntervalSet;

/// How full a [`PortPool`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortUsage {
    /// Ports in the range.
    pub total: u32,
    /// Ports handed out or adopted.
    pub allocated: u32,
    /// Ports that can still be handed out.
    pub free: u32,
}

/// The free ports of a range, for a relay's public side.
///
/// Allocation takes a given port or the next free one after the last port
/// handed out (next fit, wrapping around), so a port just released is not
/// handed out again before the search has gone round the range: a client
/// still holding the old address does not soon reach the next user's
/// container. Every operation is a walk of at most three levels down a
/// bitmap tree. Safe to share between threads.
///
/// ```
/// use kisara_net::PortPool;
///
/// let pool = PortPool::default(); // 20000-50000
/// assert_eq!(pool.allocate(None)?, 20000);
/// assert_eq!(pool.allocate(Some(20005))?, 20005);
/// assert_eq!(pool.allocate(None)?, 20006);
/// assert!(pool.release(20000));
/// assert_eq!(pool.usage().allocated, 2);
/// # Ok::<(), kisara_core::Error>(())
/// ```
pub struct PortPool {
    range: PortRange,
    state: Mutex<PortState>,
}

/// Shows the range and how full it is, not the free-port tree.
impl fmt::Debug for PortPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortPool")
            .field("range", &self.range.to_string())
            .field("usage", &self.usage())
            .finish()
    }
}

#[derive(Debug)]
struct PortState {
    free: IntervalSet,
    /// Where the next search for a free port starts.
    next: u128,
}

impl PortPool {
    /// A pool of every port in `range`, all free; the range must satisfy
    /// `1 <= start <= end`.
    pub fn new(range: PortRange) -> Result<Self, Error> {
        if range.start == 0 || range.start > range.end {
            return Err(Error::PortRange {
                range: range.to_string(),
                message: "a port pool needs 1 <= start <= end".to_owned(),
            });
        }
        let mut free = IntervalSet::empty(1 << 16);
        free.insert(range.start.into(), range.end.into());
        Ok(Self {
            range,
            state: Mutex::new(PortState {
                free,
                next: range.start.into(),
            }),
        })
    }

    /// The range the pool hands ports out of.
    pub fn range(&self) -> PortRange {
        self.range
    }

    fn state(&self) -> MutexGuard<'_, PortState> {
        lock(&self.state)
    }

    /// Takes `port`, or the next free port when `None`.
    ///
    /// # Errors
    ///
    /// [`kisara_core::Error::Invalid`] for a port outside the range,
    /// [`kisara_core::Error::Conflict`] for a port in use,
    /// [`kisara_core::Error::Exhausted`] (naming the pool) when none is free.
    pub fn allocate(&self, port: Option<u16>) -> kisara_core::Result<u16> {
        let mut state = self.state();
        let taken = match port {
            Some(port) => {
                if !self.range.contains(port) {
                    return Err(kisara_core::Error::invalid(
                        "port",
                        format!("port {port} is outside the port pool {}", self.range),
                    ));
                }
                if state.free.remove(port.into(), port.into()) == 0 {
                    return Err(kisara_core::Error::conflict(format!(
                        "port {port} of the port pool {} is in use",
                        self.range
                    )));
                }
                u128::from(port)
            }
            None => {
                let from = state.next;
                state.free.take_next(from).ok_or_else(|| {
                    kisara_core::Error::exhausted(format!(
                        "port pool {} has no free port (all {} in use)",
                        self.range,
                        self.total()
                    ))
                })?
            }
        };
        state.next = taken + 1;
        // The set only ever holds ports of the range.
        Ok(taken as u16)
    }

    /// Gives `port` back; returns whether it was in use. Ports outside the
    /// range are ignored.
    pub fn release(&self, port: u16) -> bool {
        self.range.contains(port) && self.state().free.insert(port.into(), port.into()) == 1
    }

    /// Marks `port` in use, as found after a restart; returns whether it was
    /// free. Adopting a port in use is a no-op, and a port outside the range
    /// (handed out under an older config) is ignored: it cannot collide with
    /// the pool.
    pub fn adopt(&self, port: u16) -> bool {
        self.range.contains(port) && self.state().free.remove(port.into(), port.into()) == 1
    }

    /// Whether `port` is in the range and free.
    pub fn is_free(&self, port: u16) -> bool {
        self.range.contains(port) && self.state().free.contains(port.into())
    }

    fn total(&self) -> u32 {
        u32::from(self.range.end - self.range.start) + 1
    }

    /// How full the pool is.
    pub fn usage(&self) -> PortUsage {
        let free = self.state().free.len() as u32;
        PortUsage {
            total: self.total(),
            allocated: self.total() - free,
            free,
        }
    }
}

impl Default for PortPool {
    /// A pool of [`DEFAULT_PORT_RANGE`].
    fn default() -> Self {
        Self::new(DEFAULT_PORT_RANGE).expect("the default range is valid")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use kisara_core::ErrorKind;
    use proptest::prelude::*;

    use super::*;

    fn pool(start: u16, end: u16) -> PortPool {
        PortPool::new(PortRange { start, end }).unwrap()
    }

    #[test]
    fn rejects_bad_ranges() {
        for (start, end) in [(0, 10), (10, 9)] {
            let err = PortPool::new(PortRange { start, end })
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{start}-{end}")), "{err}");
        }
        assert_eq!(pool(65535, 65535).usage().total, 1);
    }

    #[test]
    fn specific_ports_and_errors() {
        let pool = pool(100, 102);
        assert_eq!(pool.allocate(Some(101)).unwrap(), 101);
        assert_eq!(
            pool.allocate(Some(101)).unwrap_err().kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            pool.allocate(Some(99)).unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert_eq!(pool.allocate(None).unwrap(), 102);
        assert_eq!(pool.allocate(None).unwrap(), 100);
        let err = pool.allocate(None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Exhausted);
        assert!(err.to_string().contains("port pool 100-102"), "{err}");
        assert_eq!(
            pool.usage(),
            PortUsage {
                total: 3,
                allocated: 3,
                free: 0
            }
        );
        assert!(pool.release(101));
        assert!(!pool.release(101), "releasing twice is a no-op");
        assert!(!pool.release(7), "outside the range");
        assert_eq!(pool.allocate(None).unwrap(), 101);
    }

    #[test]
    fn adoption_marks_ports_in_use() {
        let pool = PortPool::default();
        assert!(pool.adopt(20000));
        assert!(!pool.adopt(20000), "adopting again is a no-op");
        assert!(!pool.adopt(80), "outside the range");
        assert!(!pool.is_free(20000) && pool.is_free(20001));
        assert_eq!(pool.allocate(None).unwrap(), 20001);
        assert_eq!(pool.usage().allocated, 2);
        assert_eq!(pool.usage().free, 30_001 - 2);
    }

    #[test]
    fn released_ports_are_reused_last() {
        let pool = pool(1000, 1004);
        assert_eq!(pool.allocate(None).unwrap(), 1000);
        pool.release(1000);
        let order: Vec<u16> = (0..5).map(|_| pool.allocate(None).unwrap()).collect();
        assert_eq!(order, [1001, 1002, 1003, 1004, 1000]);
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let pool = Arc::new(pool(1, 4000));
        let taken: Vec<Vec<u16>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let pool = Arc::clone(&pool);
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..1500 {
                            let port = pool.allocate(None).unwrap();
                            if i % 3 == 0 {
                                assert!(pool.release(port));
                            } else {
                                mine.push(port);
                            }
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let all: Vec<u16> = taken.into_iter().flatten().collect();
        let distinct: BTreeSet<u16> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "a port was handed out twice");
        assert_eq!(pool.usage().allocated as usize, all.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Any,
        Specific(u16),
        Release(u16),
        Adopt(u16),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The pool behaves like a set of used ports with next-fit search.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(prop_oneof![
            Just(Op::Any),
            (8u16..28).prop_map(Op::Specific),
            (8u16..28).prop_map(Op::Release),
            (8u16..28).prop_map(Op::Adopt),
        ], 1..100)) {
            let pool = pool(10, 25);
            let mut used = BTreeSet::new();
            let mut next = 10u16;
            let in_range = |port: u16| (10..=25).contains(&port);
            for op in ops {
                match op {
                    Op::Any => {
                        let expected = (next..=25).chain(10..next).find(|p| !used.contains(p));
                        match (pool.allocate(None), expected) {
                            (Ok(port), Some(expected)) => {
                                prop_assert_eq!(port, expected);
                                used.insert(port);
                                next = port + 1;
                            }
                            (Err(err), None) => prop_assert_eq!(err.kind(), ErrorKind::Exhausted),
                            (got, expected) => prop_assert!(false, "got {:?}, expected {:?}", got, expected),
                        }
                    }
                    Op::Specific(port) => {
                        let got = pool.allocate(Some(port));
                        if !in_range(port) {
                            prop_assert_eq!(got.unwrap_err().kind(), ErrorKind::Invalid);
                        } else if used.insert(port) {
                            prop_assert_eq!(got.unwrap(), port);
                            next = port + 1;
                        } else {
                            prop_assert_eq!(got.unwrap_err().kind(), ErrorKind::Conflict);
                        }
                    }
                    Op::Release(port) => prop_assert_eq!(pool.release(port), used.remove(&port)),
                    Op::Adopt(port) => prop_assert_eq!(pool.adopt(port), in_range(port) && used.insert(port)),
                }
                let usage = pool.usage();
                prop_assert_eq!(usage.allocated as usize, used.len());
                prop_assert_eq!(usage.free as usize, 16 - used.len());
            }
        }
    }
}
