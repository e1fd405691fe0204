//! The relay's metrics, through the `metrics` facade: install any recorder
//! (e.g. Prometheus) in the process and they are exported with the rest.
//! Without one they cost an atomic load each.
//!
//! The names, kinds and labels are listed in the crate's README
//! (Metrics); they are named in one place, the constants below.
//!
//! Gauges are held by guards ([`Active`]) that give their count back when
//! dropped, so a task ended by cancellation (a relay stopping) leaves no
//! count behind.

use kisara_core::model::Protocol;
use metrics::{Gauge, counter, gauge};

const CLIENTS: &str = "kisara_tunnel_clients";
const REJECTED: &str = "kisara_tunnel_rejected_total";
const EXPOSURES: &str = "kisara_tunnel_exposures";
const TCP_VISITORS: &str = "kisara_tunnel_tcp_visitors";
const TCP_VISITORS_TOTAL: &str = "kisara_tunnel_tcp_visitors_total";
const TCP_BYTES: &str = "kisara_tunnel_tcp_bytes_total";
const UDP_SESSIONS: &str = "kisara_tunnel_udp_sessions";
const UDP_PEERS_DROPPED: &str = "kisara_tunnel_udp_peers_dropped_total";

/// One unit of a gauge, held while what it counts lasts.
#[derive(Debug)]
pub(crate) struct Active(Gauge);

impl Active {
    fn hold(gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }

    /// A control link that passed authentication.
    pub(crate) fn client() -> Self {
        Self::hold(gauge!(CLIENTS))
    }

    /// An exposure in place.
    pub(crate) fn exposure(protocol: Protocol) -> Self {
        Self::hold(gauge!(EXPOSURES, "protocol" => protocol.to_string()))
    }

    /// A TCP visitor accepted and routed.
    pub(crate) fn tcp_visitor() -> Self {
        Self::hold(gauge!(TCP_VISITORS))
    }

    /// A UDP session.
    pub(crate) fn udp_session() -> Self {
        Self::hold(gauge!(UDP_SESSIONS))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Why a connection to the relay's client port was turned away.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rejected {
    Tls,
    Opening,
    Token,
}

pub(crate) fn rejected(reason: Rejected) {
    let reason = match reason {
        Rejected::Tls => "tls",
        Rejected::Opening => "opening",
        Rejected::Token => "token",
    };
    counter!(REJECTED, "reason" => reason).increment(1);
}

/// How a TCP visitor ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum VisitorEnd {
    /// Carried until both directions ended: bytes to the target and back.
    Carried(u64, u64),
    Broken,
    OverLimit,
    ClientOffline,
    NoDataConnection,
    Withdrawn,
}

pub(crate) fn tcp_visitor_ended(end: VisitorEnd) {
    let outcome = match end {
        VisitorEnd::Carried(to_target, to_visitor) => {
            counter!(TCP_BYTES, "direction" => "to_target").increment(to_target);
            counter!(TCP_BYTES, "direction" => "to_visitor").increment(to_visitor);
            "carried"
        }
        VisitorEnd::Broken => "broken",
        VisitorEnd::OverLimit => "over_limit",
        VisitorEnd::ClientOffline => "client_offline",
        VisitorEnd::NoDataConnection => "no_data_connection",
        VisitorEnd::Withdrawn => "withdrawn",
    };
    counter!(TCP_VISITORS_TOTAL, "outcome" => outcome).increment(1);
}

pub(crate) fn udp_peer_dropped() {
    counter!(UDP_PEERS_DROPPED).increment(1);
}
