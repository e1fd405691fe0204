//! [`PortSpec`]: the ports of a container, `80/tcp,8000-8010/tcp,53/udp`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use kisara_core::model::{ContainerPort, Protocol};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest spec text accepted.
const MAX_SPEC_LEN: usize = 16 * 1024;

/// A list of container ports, each once: `80/tcp,22/tcp,53/udp`.
///
/// Items are separated by commas; an item is a port or a range `lo-hi`,
/// optionally followed by `/tcp` or `/udp` (TCP when left out); whitespace
/// around the parts is ignored, and an empty text is an empty list. Port 0,
/// ports above 65535, reversed ranges, unknown protocols, empty items and a
/// port listed twice (also through overlapping ranges) are each an
/// [`Error::PortSpec`] naming the item.
///
/// [`fmt::Display`] writes every port with its protocol and folds runs back
/// into ranges, so the text parses back to an equal list. Serialized as that
/// string.
///
/// ```
/// use kisara_core::model::ContainerPort;
/// use kisara_net::PortSpec;
///
/// let spec: PortSpec = " 80, 8000-8002/tcp , 53/UDP".parse()?;
/// assert_eq!(spec.len(), 5);
/// assert_eq!(spec.ports()[0], ContainerPort::tcp(80));
/// assert_eq!(spec.to_string(), "80/tcp,8000-8002/tcp,53/udp");
///
/// let err = "80/tcp,8000-8010/tcp,8005".parse::<PortSpec>().unwrap_err();
/// assert_eq!(err.to_string(), r#"port spec item 3: "8005": 8005/tcp is already listed in item 2"#);
/// # Ok::<(), kisara_net::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortSpec {
    ports: Vec<ContainerPort>,
}

impl PortSpec {
    /// A spec of `ports`, in order; rejects port 0 and duplicates.
    pub fn new(ports: impl IntoIterator<Item = ContainerPort>) -> Result<Self, Error> {
        let mut seen = HashMap::new();
        let mut list = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            let token = port.to_string();
            if port.port == 0 {
                return Err(item_error(
                    i + 1,
                    &token,
                    "port 0 is outside 1-65535".to_owned(),
                ));
            }
            if let Some(first) = seen.insert(port, i + 1) {
                return Err(item_error(
                    i + 1,
                    &token,
                    format!("{port} is already listed in item {first}"),
                ));
            }
            list.push(port);
        }
        Ok(Self { ports: list })
    }

    /// The ports, in the order written.
    pub fn ports(&self) -> &[ContainerPort] {
        &self.ports
    }

    /// How many ports it lists.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether it lists no port.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The ports, in the order written.
    pub fn iter(&self) -> std::slice::Iter<'_, ContainerPort> {
        self.ports.iter()
    }
}

impl FromStr for PortSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_SPEC_LEN {
            return Err(Error::port_spec(
                0,
                text,
                format!(
                    "the spec is {} bytes long; at most {MAX_SPEC_LEN}",
                    text.len()
                ),
            ));
        }
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut seen: HashMap<ContainerPort, usize> = HashMap::new();
        let mut ports = Vec::new();
        for (i, raw) in text.split(',').enumerate() {
            let (number, token) = (i + 1, raw.trim());
            if token.is_empty() {
                return Err(Error::port_spec(number, token, "is empty"));
            }
            let (lo, hi, protocol) =
                parse_item(token).map_err(|detail| item_error(number, token, detail))?;
            for port in lo..=hi {
                let port = ContainerPort { port, protocol };
                if let Some(first) = seen.insert(port, number) {
                    return Err(item_error(
                        number,
                        token,
                        format!("{port} is already listed in item {first}"),
                    ));
                }
                ports.push(port);
            }
        }
        Ok(Self { ports })
    }
}

/// `port[-port][/protocol]` as `(lo, hi, protocol)`, or what is wrong.
fn parse_item(item: &str) -> Result<(u16, u16, Protocol), String> {
    let (ports, protocol) = match item.split_once('/') {
        Some((ports, protocol)) => (ports.trim(), protocol.parse().map_err(core_message)?),
        None => (item, Protocol::Tcp),
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((lo, hi)) => (port_number(lo)?, port_number(hi)?),
        None => {
            let port = port_number(ports)?;
            (port, port)
        }
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} is reversed; write {hi}-{lo}"));
    }
    Ok((lo, hi, protocol))
}

/// A port number 1-65535, checked as core checks one [`ContainerPort`].
fn port_number(text: &str) -> Result<u16, String> {
    text.parse::<ContainerPort>()
        .map(|port| port.port)
        .map_err(core_message)
}

/// The message of a core `Invalid` error, without its "invalid ..." prefix.
fn core_message(err: kisara_core::Error) -> String {
    match err {
        kisara_core::Error::Invalid { message, .. } => message,
        other => other.to_string(),
    }
}

/// An error for item `number`, its message starting with the quoted item.
fn item_error(number: usize, token: &str, detail: String) -> Error {
    let quoted = format!("{:?}", kisara_core::excerpt(token));
    let message = if detail.starts_with(&quoted) {
        detail
    } else {
        format!("{quoted}: {detail}")
    };
    Error::port_spec(number, token, message)
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.ports.as_slice();
        let mut first = true;
        while let Some(start) = rest.first() {
            // The longest run start, start+1, ... of one protocol.
            let run = rest
                .iter()
                .zip(u32::from(start.port)..)
                .take_while(|(port, expected)| {
                    u32::from(port.port) == *expected && port.protocol == start.protocol
                })
                .count();
            if !first {
                f.write_str(",")?;
            }
            first = false;
            let end = rest[run - 1];
            if run == 1 {
                write!(f, "{start}")?;
            } else {
                write!(f, "{}-{}/{}", start.port, end.port, start.protocol)?;
            }
            rest = &rest[run..];
        }
        Ok(())
    }
}

impl TryFrom<String> for PortSpec {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        text.parse()
    }
}

impl From<PortSpec> for String {
    fn from(spec: PortSpec) -> Self {
        spec.to_string()
    }
}

impl From<PortSpec> for Vec<ContainerPort> {
    fn from(spec: PortSpec) -> Self {
        spec.ports
    }
}

impl<'a> IntoIterator for &'a PortSpec {
    type Item = &'a ContainerPort;
    type IntoIter = std::slice::Iter<'a, ContainerPort>;
    fn into_iter(self) -> Self::IntoIter {
        self.ports.iter()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> PortSpec {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    #[test]
    fn parses_lists_ranges_and_defaults() {
        let spec = parse("80/tcp,22/tcp,53/udp");
        assert_eq!(
            spec.ports(),
            [
                ContainerPort::tcp(80),
                ContainerPort::tcp(22),
                ContainerPort::udp(53)
            ]
        );
        assert_eq!(parse("8000-8010/tcp").len(), 11);
        assert_eq!(
            parse(" 8000 - 8002 / udp ").ports()[2],
            ContainerPort::udp(8002)
        );
        assert_eq!(
            parse("53/tcp,53/udp").len(),
            2,
            "one port in both protocols is fine"
        );
        assert_eq!(parse("1-65535/tcp,1-65535/udp").len(), 131_070);
        assert!(parse("").is_empty() && parse("  ").is_empty());
        assert_eq!(parse("65535").to_string(), "65535/tcp");
    }

    #[test]
    fn display_folds_runs() {
        for (text, shown) in [
            ("80,81,82/tcp,83/udp", "80-82/tcp,83/udp"),
            ("3,2,1", "3/tcp,2/tcp,1/tcp"),
            ("8000-8002/udp,8003/tcp", "8000-8002/udp,8003/tcp"),
            ("65534-65535", "65534-65535/tcp"),
            ("", ""),
        ] {
            let spec = parse(text);
            assert_eq!(spec.to_string(), shown);
            assert_eq!(parse(shown), spec);
        }
    }

    #[test]
    fn errors_name_the_item() {
        for (text, expected) in [
            (
                "80/tcp,0/tcp",
                r#"port spec item 2: "0/tcp": port 0 is outside 1-65535"#,
            ),
            (
                "65536",
                r#"port spec item 1: "65536": port 65536 is outside 1-65535"#,
            ),
            (
                "80/sctp",
                r#"port spec item 1: "80/sctp": "sctp" is not a protocol; use tcp or udp"#,
            ),
            ("80,,81", "port spec item 2: is empty"),
            ("80,", "port spec item 2: is empty"),
            ("http", r#"port spec item 1: "http" is not a port number"#),
            (
                "90-80/udp",
                r#"port spec item 1: "90-80/udp": range 90-80 is reversed; write 80-90"#,
            ),
            (
                "80-/tcp",
                r#"port spec item 1: "80-/tcp": "" is not a port number"#,
            ),
            (
                "22,22/tcp",
                r#"port spec item 2: "22/tcp": 22/tcp is already listed in item 1"#,
            ),
            (
                "1-10/udp, 5/udp",
                r#"port spec item 2: "5/udp": 5/udp is already listed in item 1"#,
            ),
            ("80/tcp/udp", r#""tcp/udp" is not a protocol"#),
        ] {
            let err = text.parse::<PortSpec>().unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let err = "1,"
            .repeat(10_000)
            .parse::<PortSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 16384") && err.len() < 300, "{err}");
        let Err(Error::PortSpec { item, token, .. }) = "80, 99999/udp".parse::<PortSpec>() else {
            panic!("expected a port spec error");
        };
        assert_eq!((item, token.as_str()), (2, "99999/udp"));
    }

    #[test]
    fn new_checks_what_parsing_checks() {
        assert!(PortSpec::new([ContainerPort::tcp(80), ContainerPort::udp(80)]).is_ok());
        let err = PortSpec::new([ContainerPort::tcp(80), ContainerPort::tcp(80)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("80/tcp is already listed in item 1"),
            "{err}"
        );
        let err = PortSpec::new([ContainerPort::tcp(0)]).unwrap_err();
        assert!(err.to_string().contains("port 0"), "{err}");
    }

    #[test]
    fn serde_uses_the_text() {
        let spec: PortSpec = serde_json::from_str(r#""80, 53/udp""#).unwrap();
        assert_eq!(serde_json::to_string(&spec).unwrap(), r#""80/tcp,53/udp""#);
        assert!(serde_json::from_str::<PortSpec>(r#""80,80""#).is_err());
        let ports: Vec<ContainerPort> = spec.into();
        assert_eq!(ports.len(), 2);
    }

    fn port() -> impl Strategy<Value = ContainerPort> {
        (1u16.., any::<bool>()).prop_map(|(port, udp)| {
            if udp {
                ContainerPort::udp(port)
            } else {
                ContainerPort::tcp(port)
            }
        })
    }

    /// Runs of consecutive ports, so that display folds some of them.
    fn ports() -> impl Strategy<Value = Vec<ContainerPort>> {
        proptest::collection::vec((port(), 1u16..5), 0..12).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(start, len)| {
                    (0..len).filter_map(move |i| {
                        start.port.checked_add(i).map(|port| ContainerPort {
                            port,
                            protocol: start.protocol,
                        })
                    })
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Display parses back to an equal spec, and displays the same.
        #[test]
        fn display_round_trips(mut list in ports()) {
            let mut seen = std::collections::HashSet::new();
            list.retain(|port| seen.insert(*port));
            let spec = PortSpec::new(list.clone()).unwrap();
            let shown = spec.to_string();
            let again = parse(&shown);
            prop_assert_eq!(again.ports(), list.as_slice());
            prop_assert_eq!(again.to_string(), shown);
        }
    }
}
