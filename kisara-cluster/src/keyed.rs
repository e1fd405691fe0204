//! Cells remembered under idempotency keys for a fixed window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One shared cell per key, made on first use and forgotten once it is
/// older than the window. Expiry walks the keys oldest first and stops at
/// the first one still inside the window, so a lookup costs the same with
/// ten keys as with a million (a full scan per call did not).
#[derive(Debug)]
pub(crate) struct KeyedCells<V> {
    window: Duration,
    cells: HashMap<String, Arc<V>>,
    /// Keys in the order they were made, with when.
    made: VecDeque<(Instant, String)>,
}

impl<V: Default> KeyedCells<V> {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            cells: HashMap::new(),
            made: VecDeque::new(),
        }
    }

    /// The cell for `key` at `now`: the one made within the window, or a
    /// new one.
    pub(crate) fn cell(&mut self, key: String, now: Instant) -> Arc<V> {
        while let Some((made, _)) = self.made.front() {
            if now.saturating_duration_since(*made) < self.window {
                break;
            }
            if let Some((_, expired)) = self.made.pop_front() {
                self.cells.remove(&expired);
            }
        }
        if let Some(cell) = self.cells.get(&key) {
            return cell.clone();
        }
        let cell = Arc::new(V::default());
        self.made.push_back((now, key.clone()));
        self.cells.insert(key, cell.clone());
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_cell_for_the_window_only() {
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let mut cells = KeyedCells::<std::sync::Mutex<u32>>::new(window);
        *cells.cell("a".into(), start).lock().unwrap() = 7;
        cells.cell("b".into(), start + Duration::from_secs(30));

        let later = start + Duration::from_secs(59);
        assert_eq!(*cells.cell("a".into(), later).lock().unwrap(), 7);

        // "a" expired, "b" not yet: only "a" starts over.
        let after = start + window;
        assert_eq!(*cells.cell("a".into(), after).lock().unwrap(), 0);
        assert_eq!(cells.cells.len(), 2);
        let b = cells.cell("b".into(), after);
        assert_eq!(*b.lock().unwrap(), 0);
        assert_eq!(
            cells.made.len(),
            2,
            "expired keys are dropped: {:?}",
            cells.made
        );
    }
}
