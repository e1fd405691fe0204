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
use metrics::{Gauge, counter, describe_counter, describe_gauge, gauge};

const CLIENTS: &str = "kisara_tunnel_clients";
const REJECTED: &str = "kisara_tunnel_rejected_total";
const EXPOSURES: &str = "kisara_tunnel_exposures";
const TCP_VISITORS: &str = "kisara_tunnel_tcp_visitors";
const TCP_VISITORS_TOTAL: &str = "kisara_tunnel_tcp_visitors_total";
const TCP_BYTES: &str = "kisara_tunnel_tcp_bytes_total";
const UDP_SESSIONS: &str = "kisara_tunnel_udp_sessions";
const UDP_PEERS_DROPPED: &str = "kisara_tunnel_udp_peers_dropped_total";

/// Gives the recorder each metric's help text, and puts the gauges and the
/// unlabelled counter in place at 0: a scrape of an idle relay shows them
/// (an absent series is not a zero to alerting rules). Adding 0 leaves a
/// value another relay in the process holds as it is.
pub(crate) fn describe() {
    describe_gauge!(CLIENTS, "Control links up");
    describe_counter!(
        REJECTED,
        "Connections turned away at the client port, by reason"
    );
    describe_gauge!(EXPOSURES, "Exposures in place, by protocol");
    describe_gauge!(TCP_VISITORS, "TCP visitors being carried");
    describe_counter!(TCP_VISITORS_TOTAL, "TCP visitors by how they ended");
    describe_counter!(
        TCP_BYTES,
        "Bytes of TCP visitors carried to the end, by direction"
    );
    describe_gauge!(UDP_SESSIONS, "UDP peers with a session");
    describe_counter!(
        UDP_PEERS_DROPPED,
        "Datagrams of new UDP peers dropped: beyond an exposure's bound, or their client's link congested"
    );
    for gauge in [
        gauge!(CLIENTS),
        gauge!(EXPOSURES, "protocol" => Protocol::Tcp.to_string()),
        gauge!(EXPOSURES, "protocol" => Protocol::Udp.to_string()),
        gauge!(TCP_VISITORS),
        gauge!(UDP_SESSIONS),
    ] {
        gauge.increment(0.0);
    }
    counter!(UDP_PEERS_DROPPED).increment(0);
}

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
    /// The client's control link had too many messages waiting.
    LinkCongested,
    NoDataConnection,
    Withdrawn,
}

impl VisitorEnd {
    /// The `outcome` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Carried(..) => "carried",
            Self::Broken => "broken",
            Self::OverLimit => "over_limit",
            Self::ClientOffline => "client_offline",
            Self::LinkCongested => "link_congested",
            Self::NoDataConnection => "no_data_connection",
            Self::Withdrawn => "withdrawn",
        }
    }
}

pub(crate) fn tcp_visitor_ended(end: VisitorEnd) {
    if let VisitorEnd::Carried(to_target, to_visitor) = end {
        counter!(TCP_BYTES, "direction" => "to_target").increment(to_target);
        counter!(TCP_BYTES, "direction" => "to_visitor").increment(to_visitor);
    }
    counter!(TCP_VISITORS_TOTAL, "outcome" => end.label()).increment(1);
}

pub(crate) fn udp_peer_dropped() {
    counter!(UDP_PEERS_DROPPED).increment(1);
}
