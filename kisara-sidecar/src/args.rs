//! The command line: `--forward LISTEN_PORT:TARGET_IP:TARGET_PORT/tcp|udp`
//! (one or more) and `--udp-idle SECS`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub(crate) const USAGE: &str = "\
usage: kisara-sidecar [--udp-idle SECS] --forward LISTEN_PORT:TARGET_IP:TARGET_PORT/tcp|udp ...
  --forward 8080:10.201.7.2:80/tcp   TCP on 0.0.0.0:8080 to 10.201.7.2:80
  --forward 5353:[fd00::2]:53/udp    UDP on 0.0.0.0:5353 to [fd00::2]:53
  --udp-idle SECS                    forget a silent UDP peer after SECS (default 60)";

const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(60);

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// One `--forward`: what to listen on and where to send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forward {
    pub(crate) listen_port: u16,
    pub(crate) target: SocketAddr,
    pub(crate) protocol: Protocol,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.listen_port, self.target, self.protocol)
    }
}

/// What to run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) forwards: Vec<Forward>,
    pub(crate) udp_idle: Duration,
}

/// The command line's meaning.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Run(Config),
    Help,
}

/// Parses the arguments (without the program name); the error names the
/// bad argument and says what is expected.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mut forwards: Vec<Forward> = Vec::new();
    let mut udp_idle = DEFAULT_UDP_IDLE;
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--forward" | "--udp-idle" => {}
            _ => return Err(format!("unknown argument {arg:?}")),
        }
        let Some(value) = inline.or_else(|| args.next()) else {
            return Err(format!("{flag} needs a value"));
        };
        let bad = |why: String| format!("bad argument \"{flag} {value}\": {why}");
        if flag == "--udp-idle" {
            udp_idle = match value.parse::<u64>() {
                Ok(secs) if secs > 0 => Duration::from_secs(secs),
                _ => return Err(bad("expected a number of seconds above 0".to_owned())),
            };
            continue;
        }
        let forward = parse_forward(&value).map_err(bad)?;
        if let Some(other) = forwards
            .iter()
            .find(|f| (f.listen_port, f.protocol) == (forward.listen_port, forward.protocol))
        {
            return Err(bad(format!(
                "port {}/{} is already forwarded by \"{other}\"",
                forward.listen_port, forward.protocol
            )));
        }
        forwards.push(forward);
    }
    if forwards.is_empty() {
        return Err("nothing to forward: give at least one --forward".to_owned());
    }
    Ok(Command::Run(Config { forwards, udp_idle }))
}

fn parse_forward(value: &str) -> Result<Forward, String> {
    let (rest, protocol) = value
        .rsplit_once('/')
        .ok_or("expected LISTEN_PORT:TARGET_IP:TARGET_PORT/tcp|udp")?;
    let protocol = if protocol.eq_ignore_ascii_case("tcp") {
        Protocol::Tcp
    } else if protocol.eq_ignore_ascii_case("udp") {
        Protocol::Udp
    } else {
        return Err(format!("protocol {protocol:?} is neither tcp nor udp"));
    };
    let (listen, target) = rest
        .split_once(':')
        .ok_or("expected LISTEN_PORT:TARGET_IP:TARGET_PORT/tcp|udp")?;
    let listen_port = listen
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("listen port {listen:?} is not a port from 1 to 65535"))?;
    let target = target
        .parse::<SocketAddr>()
        .ok()
        .filter(|target| target.port() != 0)
        .ok_or_else(|| {
            format!("target {target:?} is not IP:PORT (write IPv6 as [addr]:port; no host names)")
        })?;
    Ok(Forward {
        listen_port,
        target,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse(args.iter().map(|a| (*a).to_owned()))? {
            Command::Run(config) => Ok(config),
            Command::Help => Err("help".to_owned()),
        }
    }

    #[test]
    fn forwards_parse_with_ipv4_and_ipv6_targets() {
        let config = run(&[
            "--forward",
            "8080:10.201.7.2:80/tcp",
            "--forward=5353:[fd00::2]:53/UDP",
            "--udp-idle",
            "5",
        ])
        .unwrap();
        assert_eq!(
            config.forwards,
            [
                Forward {
                    listen_port: 8080,
                    target: "10.201.7.2:80".parse().unwrap(),
                    protocol: Protocol::Tcp,
                },
                Forward {
                    listen_port: 5353,
                    target: "[fd00::2]:53".parse().unwrap(),
                    protocol: Protocol::Udp,
                },
            ]
        );
        assert_eq!(config.udp_idle, Duration::from_secs(5));
        assert_eq!(config.forwards[1].to_string(), "5353:[fd00::2]:53/udp");
        let config = run(&["--forward", "80:10.0.0.1:80/tcp"]).unwrap();
        assert_eq!(config.udp_idle, DEFAULT_UDP_IDLE);
    }

    #[test]
    fn the_same_port_may_carry_tcp_and_udp_but_not_twice_one() {
        run(&[
            "--forward",
            "53:10.0.0.1:53/tcp",
            "--forward",
            "53:10.0.0.1:53/udp",
        ])
        .unwrap();
        let error = run(&[
            "--forward",
            "53:10.0.0.1:53/tcp",
            "--forward",
            "53:10.0.0.2:53/tcp",
        ])
        .unwrap_err();
        assert!(error.contains("53:10.0.0.2:53/tcp"), "{error}");
        assert!(error.contains("already forwarded"), "{error}");
    }

    #[test]
    fn bad_input_names_the_argument() {
        for (args, expected) in [
            (&["--forward", "80:10.0.0.1:80"][..], "tcp|udp"),
            (&["--forward", "80:10.0.0.1:80/sctp"], "sctp"),
            (&["--forward", "0:10.0.0.1:80/tcp"], "listen port \"0\""),
            (
                &["--forward", "70000:10.0.0.1:80/tcp"],
                "listen port \"70000\"",
            ),
            (&["--forward", "80:example.com:80/tcp"], "example.com:80"),
            (&["--forward", "80:fd00::2:53/udp"], "[addr]:port"),
            (&["--forward", "80:10.0.0.1:0/tcp"], "10.0.0.1:0"),
            (&["--forward", "80/tcp"], "LISTEN_PORT:TARGET_IP"),
            (&["--forward"], "--forward needs a value"),
            (
                &["--udp-idle", "0", "--forward", "1:10.0.0.1:1/udp"],
                "--udp-idle 0",
            ),
            (&["--udp-idle", "soon"], "--udp-idle soon"),
            (&["--fwd", "1:10.0.0.1:1/udp"], "unknown argument \"--fwd\""),
            (&[], "at least one --forward"),
        ] {
            let error = run(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
        let error = run(&["--forward", "80:10.0.0.1:80/sctp"]).unwrap_err();
        assert!(
            error.starts_with("bad argument \"--forward 80:10.0.0.1:80/sctp\""),
            "{error}"
        );
    }

    #[test]
    fn help_is_asked_for() {
        assert_eq!(parse(["--help".to_owned()]), Ok(Command::Help));
        assert_eq!(parse(["-h".to_owned()]), Ok(Command::Help));
    }
}
