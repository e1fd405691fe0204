//! Tickets: how a browser opens a terminal or plays a recording without
//! holding an API token.
//!
//! The platform, which holds a token, asks for a ticket bound to one
//! identity and one thing (a container's terminal, a recording); the
//! browser opens the terminal's WebSocket or fetches the recording with it
//! (browsers cannot set headers on a WebSocket, nor on a player's fetch). A ticket is 256
//! random bits, works once, and expires after a short time. The book keeps
//! only each ticket's SHA-256, so neither a memory dump nor a timing probe
//! of the lookup yields a usable ticket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use kisara_core::model::ContainerId;
use kisara_core::sync::lock;
use kisara_core::{Error, Identity, RecordingId, Result};

/// What a ticket opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketScope {
    /// A terminal on this container.
    Terminal(ContainerId),
    /// Playing this recording.
    Playback(RecordingId),
}

/// How long a ticket is valid unless configured otherwise.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(60);

/// How many unused tickets the book holds at most; a platform asking for
/// more is refused until some are used or expire.
const MAX_OUTSTANDING: usize = 10_000;

/// A ticket as handed to the platform.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The secret the browser presents (64 hex digits).
    pub secret: String,
    /// How long it is valid from now.
    pub ttl: Duration,
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    scope: TicketScope,
    expires: Instant,
}

/// The outstanding tickets.
#[derive(Debug)]
pub struct TicketBook {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Default for TicketBook {
    fn default() -> Self {
        Self::new(DEFAULT_TICKET_TTL)
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl TicketBook {
    /// A book whose tickets are valid for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh ticket for `identity` to open `scope`.
    pub fn issue(&self, identity: Identity, scope: TicketScope) -> Result<Ticket> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::unavailable(format!("no random ticket: {e}")))?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        entries.retain(|_, entry| entry.expires > now);
        if entries.len() >= MAX_OUTSTANDING {
            return Err(Error::exhausted(format!(
                "{MAX_OUTSTANDING} terminal tickets are outstanding: use or let some expire first"
            )));
        }
        entries.insert(
            digest(&secret),
            Entry {
                identity,
                scope,
                expires: now + self.ttl,
            },
        );
        Ok(Ticket {
            secret,
            ttl: self.ttl,
        })
    }

    /// Takes the ticket `secret` for `scope`: the identity it was issued
    /// to. Used, expired, unknown and other scopes' tickets are all
    /// [`Error::Unauthenticated`] with one message, and a ticket presented
    /// for the wrong scope is used up all the same.
    pub fn redeem(&self, secret: &str, scope: &TicketScope) -> Result<Identity> {
        let refused = || Error::Unauthenticated {
            message: "the ticket is unknown, used or expired: ask for a new one".into(),
        };
        let entry = lock(&self.entries)
            .remove(&digest(secret))
            .ok_or_else(refused)?;
        if entry.expires <= Instant::now() || entry.scope != *scope {
            return Err(refused());
        }
        Ok(entry.identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_works_once_for_its_container_only() {
        let book = TicketBook::default();
        let alice = Identity::new("alice");
        let c1 = TicketScope::Terminal(ContainerId::new("c1"));
        let ticket = book.issue(alice.clone(), c1.clone()).unwrap();
        assert_eq!(ticket.secret.len(), 64);
        assert_eq!(book.redeem(&ticket.secret, &c1).unwrap(), alice);
        let replay = book.redeem(&ticket.secret, &c1).unwrap_err();
        assert!(
            replay.to_string().contains("unknown, used or expired"),
            "{replay}"
        );

        let other = book.issue(alice, c1.clone()).unwrap();
        assert!(
            book.redeem(
                &other.secret,
                &TicketScope::Terminal(ContainerId::new("c2"))
            )
            .is_err()
        );
        let playback = book
            .issue(
                Identity::new("auditor"),
                TicketScope::Playback(RecordingId::generate()),
            )
            .unwrap();
        assert!(
            book.redeem(&playback.secret, &c1).is_err(),
            "a playback ticket opens no terminal"
        );
        assert!(
            book.redeem(&other.secret, &c1).is_err(),
            "a misused ticket is used up"
        );
        assert!(book.redeem("", &c1).is_err());
        assert!(book.redeem("../../etc/passwd", &c1).is_err());
    }

    #[test]
    fn tickets_expire() {
        let book = TicketBook::new(Duration::ZERO);
        let c1 = TicketScope::Terminal(ContainerId::new("c1"));
        let ticket = book.issue(Identity::new("alice"), c1.clone()).unwrap();
        assert!(book.redeem(&ticket.secret, &c1).is_err());
    }
}
