//! Challenge–response on a shared token: HMAC-SHA256 proofs, constant-time
//! checks, and the slow-down for addresses that keep failing.

use kisara_core::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of nonces, tickets' random part and proofs, in bytes.
pub(crate) const NONCE_LEN: usize = 32;

/// A nonce or a proof.
pub(crate) type Bytes32 = [u8; NONCE_LEN];

/// Fresh random bytes from the operating system.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Bytes32 {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Which side a proof speaks for; each side's proof differs so that one
/// cannot be replayed as the other.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Client,
    Relay,
}

/// The proof that `role` knows `token`, bound to both nonces and the
/// client's id.
pub(crate) fn proof(
    token: &str,
    role: Role,
    relay_nonce: &Bytes32,
    client_nonce: &Bytes32,
    client_id: &str,
) -> Bytes32 {
    let label: &[u8] = match role {
        Role::Client => b"kisara-tunnel/1 client",
        Role::Relay => b"kisara-tunnel/1 relay",
    };
    hmac_sha256(
        token.as_bytes(),
        &[
            label,
            relay_nonce,
            client_nonce,
            &(client_id.len() as u32).to_be_bytes(),
            client_id.as_bytes(),
        ],
    )
}

/// Compares two proofs in constant time.
pub(crate) fn proofs_match(expected: &Bytes32, offered: &[u8]) -> bool {
    offered.len() == NONCE_LEN && bool::from(expected.ct_eq(offered))
}

/// Failed attempts per source address, for slowing down guessers.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    by_address: Mutex<HashMap<IpAddr, Record>>,
}

/// What is known of one source's failed attempts.
#[derive(Debug, Clone, Copy)]
struct Record {
    count: u32,
    /// When the last failure was.
    last: Instant,
    /// When the latest handshake admitted from this source gets its
    /// challenge; the next one comes a delay after it.
    next_turn: Instant,
}

/// Failures are forgotten after this long without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// The longest delay an address is made to wait.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// How many addresses are tracked at most; the oldest are forgotten first.
const MAX_TRACKED: usize = 16_384;

/// Whose failures an address counts towards: an IPv4 address (also when
/// mapped into IPv6), or an IPv6 address's /64, which one host commonly
/// holds whole and could otherwise rotate through.
fn source(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The delay `count` failures earn: 100 ms doubling per failure, at most
/// [`MAX_DELAY`].
fn backoff(count: u32) -> Duration {
    let shift = count.saturating_sub(1).min(6);
    (Duration::from_millis(100) * (1 << shift)).min(MAX_DELAY)
}

impl Failures {
    /// Admits a handshake from `address`: how long it waits before it gets
    /// a challenge, or `None` when its source already has handshakes
    /// waiting [`MAX_DELAY`] ahead (the connection is closed at once).
    /// Nothing waits before a source's first failure; after it, the source
    /// gets one handshake per [`backoff`], however many connections it
    /// opens at once.
    pub(crate) fn admit(&self, address: IpAddr) -> Option<Duration> {
        let mut map = lock(&self.by_address);
        let now = Instant::now();
        let Some(record) = map
            .get_mut(&source(address))
            .filter(|record| now.duration_since(record.last) < FORGET_AFTER)
        else {
            return Some(Duration::ZERO);
        };
        let turn = record.next_turn.max(now) + backoff(record.count);
        let wait = turn - now;
        if wait > MAX_DELAY {
            return None;
        }
        record.next_turn = turn;
        Some(wait)
    }

    /// Records a failure from `address`; returns its source's count so far.
    pub(crate) fn record(&self, address: IpAddr) -> u32 {
        let mut map = lock(&self.by_address);
        if map.len() >= MAX_TRACKED {
            map.retain(|_, record| record.last.elapsed() < FORGET_AFTER);
            if map.len() >= MAX_TRACKED {
                // The oldest eighth goes at once, so that a full map is
                // not scanned again at every failure.
                let mut times: Vec<Instant> = map.values().map(|record| record.last).collect();
                let cut = *times.select_nth_unstable(MAX_TRACKED / 8).1;
                map.retain(|_, record| record.last > cut);
            }
        }
        let now = Instant::now();
        let record = map.entry(source(address)).or_insert(Record {
            count: 0,
            last: now,
            next_turn: now,
        });
        if now.duration_since(record.last) >= FORGET_AFTER {
            record.count = 0;
        }
        record.count = record.count.saturating_add(1);
        record.last = now;
        record.count
    }

    /// Forgets `address`'s source after it authenticated.
    pub(crate) fn clear(&self, address: IpAddr) {
        lock(&self.by_address).remove(&source(address));
    }
}

/// Hex encoding for nonces and proofs in frames.
pub(crate) mod hex {
    /// Lower-case hex of `bytes`.
    pub(crate) fn encode(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 15)] as char);
        }
        out
    }

    /// Decodes exactly `N` bytes of hex, or `None`.
    pub(crate) fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
        let text = text.as_bytes();
        if text.len() != N * 2 {
            return None;
        }
        let digit = |c: u8| -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        };
        let mut out = [0u8; N];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_hashes_long_keys() {
        // RFC 4231 case 6: a 131-byte key.
        let key = [0xaa; 131];
        let mac = hmac_sha256(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn proofs_differ_by_role_token_and_nonce() {
        let (r, c) = ([1; 32], [2; 32]);
        let client = proof("token", Role::Client, &r, &c, "node");
        assert!(proofs_match(
            &client,
            &proof("token", Role::Client, &r, &c, "node")
        ));
        assert!(!proofs_match(
            &client,
            &proof("token", Role::Relay, &r, &c, "node")
        ));
        assert!(!proofs_match(
            &client,
            &proof("tokem", Role::Client, &r, &c, "node")
        ));
        assert!(!proofs_match(
            &client,
            &proof("token", Role::Client, &c, &r, "node")
        ));
        assert!(!proofs_match(
            &client,
            &proof("token", Role::Client, &r, &c, "nodf")
        ));
        assert!(!proofs_match(&client, &client[..31]));
    }

    /// Asserts that `admitted` is a wait of `expected`, give or take the
    /// time the test itself took since.
    fn assert_wait(admitted: Option<Duration>, expected: Duration) {
        let wait = admitted.expect("refused");
        assert!(
            wait <= expected && expected - wait < Duration::from_millis(50),
            "waits {wait:?}, not {expected:?}"
        );
    }

    #[test]
    fn failures_slow_down_and_clear() {
        let failures = Failures::default();
        let address: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(failures.admit(address), Some(Duration::ZERO));
        assert_eq!(failures.admit(address), Some(Duration::ZERO));
        failures.record(address);
        assert_wait(failures.admit(address), Duration::from_millis(100));
        failures.record(address);
        failures.record(address);
        // Three failures: 400 ms, after the turn already given out.
        assert_wait(failures.admit(address), Duration::from_millis(500));
        for _ in 0..20 {
            failures.record(address);
        }
        failures.clear(address);
        assert_eq!(failures.admit(address), Some(Duration::ZERO));
        for _ in 0..20 {
            failures.record(address);
        }
        assert_wait(failures.admit(address), MAX_DELAY);
        assert_eq!(failures.admit(address), None, "a second guess at once");
    }

    /// Connections opened at once from one source after a failure get
    /// their turns one delay apart, and none waits beyond the longest
    /// delay: one guess per delay, however many connections.
    #[test]
    fn parallel_handshakes_take_turns() {
        let failures = Failures::default();
        let address: IpAddr = "127.0.0.9".parse().unwrap();
        failures.record(address);
        let admitted: Vec<Duration> = (0..100).map_while(|_| failures.admit(address)).collect();
        assert_eq!(admitted.len(), 50, "{admitted:?}");
        for (turn, wait) in admitted.into_iter().enumerate() {
            assert_wait(Some(wait), Duration::from_millis(100) * (turn as u32 + 1));
        }
    }

    /// An IPv6 source counts by its /64; IPv4 mapped into IPv6 counts as
    /// IPv4.
    #[test]
    fn sources_are_v4_addresses_and_v6_prefixes() {
        let failures = Failures::default();
        failures.record("2001:db8:1:2::1".parse().unwrap());
        assert!(failures.admit("2001:db8:1:2:ffff::7".parse().unwrap()) > Some(Duration::ZERO));
        assert_eq!(
            failures.admit("2001:db8:1:3::1".parse().unwrap()),
            Some(Duration::ZERO)
        );
        failures.record("::ffff:192.0.2.1".parse().unwrap());
        assert!(failures.admit("192.0.2.1".parse().unwrap()) > Some(Duration::ZERO));
    }

    #[test]
    fn hex_round_trips() {
        let bytes: [u8; 4] = [0, 0xff, 0x1a, 0x80];
        assert_eq!(hex::decode::<4>(&hex::encode(&bytes)), Some(bytes));
        assert_eq!(hex::decode::<4>("00ff1a8"), None);
        assert_eq!(hex::decode::<4>("00ff1a8g"), None);
    }
}
