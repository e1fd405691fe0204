//! Fuzzing, the bounded way: arbitrary bytes and parser-shaped noise into the
//! pool pattern, pool list and port spec parsers (2,000 cases each, a second
//! or two). A parser must never panic, and whatever it accepts must display
//! as text that parses back to the same value and must be usable.

use kisara_net::{PoolAllocator, PoolPattern, PortSpec, SubnetPool};
use proptest::prelude::*;

/// Every parser on `text`; checks what they accept.
fn exercise(text: &str) -> Result<(), TestCaseError> {
    if let Ok(pattern) = text.parse::<PoolPattern>() {
        let shown = pattern.to_string();
        prop_assert_eq!(
            shown.parse::<PoolPattern>().ok(),
            Some(pattern.clone()),
            "{:?} -> {}",
            text,
            shown
        );
        let last = pattern.count() - 1;
        prop_assert_eq!(pattern.index_of(&pattern.nth(last).unwrap()), Some(last));
    }
    if let Ok(pool) = text.parse::<SubnetPool>() {
        prop_assert_eq!(
            pool.to_string().parse::<SubnetPool>().ok(),
            Some(pool.clone())
        );
        let allocator = PoolAllocator::new(pool);
        let subnet = allocator.allocate("probe").unwrap();
        prop_assert!(
            allocator
                .pool()
                .patterns()
                .iter()
                .any(|p| p.contains(&subnet))
        );
    }
    if let Ok(spec) = text.parse::<PortSpec>() {
        prop_assert_eq!(spec.to_string().parse::<PortSpec>(), Ok(spec));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        exercise(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn pattern_shaped_noise(text in r"[0-9a-f:.\[\]/, -]{0,24}( as /?[0-9]{1,3})?") {
        exercise(&text)?;
    }

    #[test]
    fn port_spec_shaped_noise(text in r"[0-9 ,/-]{0,30}(tcp|udp|TCP|sctp|/)?[0-9,-]{0,8}") {
        exercise(&text)?;
    }

    #[test]
    fn near_miss_patterns(
        octets in proptest::collection::vec(r"[0-9]{1,4}|\[[0-9]{1,4}(-[0-9]{1,4})?\]", 3..6),
        prefix in 0u32..140,
    ) {
        exercise(&format!("{}/{prefix}", octets.join(".")))?;
    }
}
