//! Firewall rules that cut internal bridge networks off from the host.
//!
//! Docker's own rules for an internal network only filter *forwarded*
//! traffic, while the host keeps the bridge's gateway address: anything
//! listening on the host's wildcard address (or on that gateway address)
//! answers a container on the "internal" network. Kisara installs, per
//! internal bridge network, rules in a chain of its own that drop
//! everything entering the host or leaving the network from that bridge,
//! except replies to connections the host opened (the node's tunnel client
//! dials containers).
//!
//! With `iptables` (whichever backend it uses, legacy or nf_tables, like
//! Docker itself) the rules live in the `KISARA-ISOLATION` chain of the
//! `filter` table, for IPv4 and IPv6, jumped to first from `INPUT` and from
//! `DOCKER-USER` (or `FORWARD` when Docker installed no `DOCKER-USER`). With
//! `nft` alone they live in the table `inet kisara_isolation`. Each rule
//! carries the comment `kisara-network:<network name>`.
//!
//! Programs run through `tokio::process` with a timeout and an argument
//! vector, never a shell; bridge and network names are checked first.

use std::collections::BTreeSet;
use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use kisara_core::{Error, Result};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::BACKEND;

/// The `iptables` chain holding Kisara's isolation rules.
pub const ISOLATION_CHAIN: &str = "KISARA-ISOLATION";

/// The `nft` table (family `inet`) holding them when only `nft` works.
pub const NFT_TABLE: &str = "kisara_isolation";

/// The driver option naming a bridge network's interface on the host.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// What starts every rule's comment; the network's name follows.
const COMMENT_PREFIX: &str = "kisara-network:";

/// How long one firewall command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// How long `iptables` waits for the xtables lock another program holds.
const XTABLES_LOCK_WAIT_SECS: &str = "10";

/// Whether [`crate::DockerRuntime`] enforces the isolation of internal
/// networks with firewall rules; the `[agent] internal_isolation` key.
pub use kisara_core::config::Isolation;

/// A bridge interface's name on the host, checked to be a plain interface
/// name (1 to 15 of `A-Z a-z 0-9 _ . -`, not starting with `-`), so it is
/// safe as a firewall argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BridgeName(String);

impl BridgeName {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the value.
    pub fn parse(name: &str) -> Result<Self> {
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if name.is_empty() || name.len() > 15 || !plain || name.starts_with('-') {
            return Err(Error::invalid(
                "bridge interface name",
                format!("{name:?}: must be 1 to 15 of A-Z a-z 0-9 _ . - and not start with -"),
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The interface Kisara gives the bridge of the network named
    /// `network`: `kis-` and 11 hex digits of the name's SHA-256. The same
    /// name always gives the same interface, so the engine itself refuses a
    /// second network of that name.
    pub fn for_network(network: &str) -> Self {
        let digest = Sha256::digest(network.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("kis-{}", &hex[..11]))
    }

    /// The interface Docker gives a bridge network created without
    /// [`BRIDGE_NAME_OPTION`]: `br-` and the first 12 characters of its id.
    pub fn docker_default(network_id: &str) -> Result<Self> {
        Self::parse(&format!(
            "br-{}",
            network_id.get(..12).unwrap_or(network_id)
        ))
    }

    /// The interface name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BridgeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One internal network's rules: its bridge interface and the network's
/// name (in the rules' comment).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsolatedNetwork {
    /// The bridge interface on the host.
    pub bridge: BridgeName,
    /// The network's name.
    pub network: String,
}

impl IsolatedNetwork {
    /// Pairs `bridge` with the network named `network`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when the name is not a plain network name (1 to
    /// 128 of `A-Z a-z 0-9 _ . -`), as it goes into the rules' comment.
    pub fn new(bridge: BridgeName, network: &str) -> Result<Self> {
        let plain = network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if network.is_empty() || network.len() > 128 || !plain {
            return Err(Error::invalid(
                "network name",
                format!("{network:?}: isolation rules need 1 to 128 of A-Z a-z 0-9 _ . -"),
            ));
        }
        Ok(Self {
            bridge,
            network: network.to_owned(),
        })
    }

    fn comment(&self) -> String {
        format!("{COMMENT_PREFIX}{}", self.network)
    }

    /// The `iptables` rules (after `-A KISARA-ISOLATION`), in order. The
    /// chain is jumped to from `INPUT` and from the forward path, so each
    /// rule works in both: to the host a packet has no output interface.
    fn iptables_rules(&self) -> Vec<Vec<String>> {
        let bridge = self.bridge.as_str();
        let comment = self.comment();
        let rule = |matches: &[&str], verdict: &str| -> Vec<String> {
            matches
                .iter()
                .copied()
                .chain(["-m", "comment", "--comment", &comment, "-j", verdict])
                .map(str::to_owned)
                .collect()
        };
        vec![
            // Containers of the same network see each other (bridged
            // traffic passes the forward path when br_netfilter is loaded).
            rule(&["-i", bridge, "-o", bridge], "RETURN"),
            // Replies to connections the host opened to a container.
            rule(
                &[
                    "-i",
                    bridge,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                ],
                "RETURN",
            ),
            // To the host, or out of the network.
            rule(&["-i", bridge], "DROP"),
            // Into the network from anywhere else.
            rule(&["-o", bridge], "DROP"),
        ]
    }

    /// The `nft` rules (chain, then the rule), in order; the same as
    /// [`Self::iptables_rules`], split over the two hooks.
    fn nft_rules(&self) -> Vec<(&'static str, String)> {
        let bridge = self.bridge.as_str();
        let comment = format!("comment \"{}\"", self.comment());
        vec![
            (
                "input",
                format!("iifname \"{bridge}\" ct state established,related accept {comment}"),
            ),
            ("input", format!("iifname \"{bridge}\" drop {comment}")),
            (
                "forward",
                format!("iifname \"{bridge}\" oifname \"{bridge}\" accept {comment}"),
            ),
            ("forward", format!("iifname \"{bridge}\" drop {comment}")),
            ("forward", format!("oifname \"{bridge}\" drop {comment}")),
        ]
    }
}

/// The firewall tool that works on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firewall {
    /// `iptables` and `ip6tables` (either backend); the programs' names.
    Iptables {
        /// The IPv4 program, e.g. `iptables` or `iptables-legacy`.
        ipv4: String,
        /// The IPv6 program, e.g. `ip6tables`.
        ipv6: String,
    },
    /// `nft`; the program's name.
    Nft {
        /// The program, e.g. `nft`.
        program: String,
    },
}

impl fmt::Display for Firewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Iptables { ipv4, ipv6 } => write!(f, "{ipv4} and {ipv6}"),
            Self::Nft { program } => f.write_str(program),
        }
    }
}

/// A firewall command that did not succeed, described with its arguments.
#[derive(Debug)]
struct CommandFailure {
    command: String,
    reason: String,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.command, self.reason)
    }
}

impl From<CommandFailure> for Error {
    fn from(failure: CommandFailure) -> Self {
        Error::Backend {
            backend: BACKEND,
            message: format!("network isolation: {failure}"),
            source: None,
        }
    }
}

/// Runs `program` with `args` (and `stdin`), returning its standard output.
async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> std::result::Result<String, CommandFailure> {
    let failure = |reason: String| CommandFailure {
        command: std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" "),
        reason,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failure(format!("could not start: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| failure(format!("took no input: {e}")))?;
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failure(format!("did not finish within {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| failure(format!("failed: {e}")))?;
    if !output.status.success() {
        return Err(failure(format!(
            "failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `iptables`-like `program` in the filter table, waiting for the
/// xtables lock.
async fn xtables(program: &str, args: &[&str]) -> std::result::Result<String, CommandFailure> {
    let all: Vec<&str> = ["-w", XTABLES_LOCK_WAIT_SECS, "-t", "filter"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run(program, &all, None).await
}

/// Splits one line of `iptables -S` into its words, unquoting `"..."`.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => current.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The word after `flag` in `words`.
fn value_after<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words
        .windows(2)
        .find(|pair| pair[0] == flag)
        .map(|pair| pair[1].as_str())
}

/// The network a rule's comment names, when it is one of Kisara's.
fn network_of_comment(comment: &str) -> Option<&str> {
    comment.strip_prefix(COMMENT_PREFIX)
}

/// One rule of Kisara's as the firewall lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedRule {
    /// Its bridge and network.
    target: IsolatedNetwork,
    /// How to delete it: `iptables -D` arguments, or the `nft` chain and
    /// handle.
    delete: Deletion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Deletion {
    Xtables { program: String, args: Vec<String> },
    Nft { chain: String, handle: u64 },
}

/// Kisara's rules in `iptables -S` output (of its chain or the table).
fn parse_xtables(program: &str, listing: &str) -> Vec<ListedRule> {
    listing
        .lines()
        .filter_map(|line| {
            let words = words(line);
            if words.first().map(String::as_str) != Some("-A")
                || words.get(1).map(String::as_str) != Some(ISOLATION_CHAIN)
            {
                return None;
            }
            let network = network_of_comment(value_after(&words, "--comment")?)?;
            let bridge = value_after(&words, "-i").or_else(|| value_after(&words, "-o"))?;
            let target = IsolatedNetwork::new(BridgeName::parse(bridge).ok()?, network).ok()?;
            let mut args = words;
            args[0] = "-D".to_owned();
            Some(ListedRule {
                target,
                delete: Deletion::Xtables {
                    program: program.to_owned(),
                    args,
                },
            })
        })
        .collect()
}

/// Whether `present` (one program's listed rules of `target`'s bridge) are
/// exactly the rules `target` needs, in order.
fn xtables_rules_are_exact(present: &[ListedRule], target: &IsolatedNetwork) -> bool {
    let wanted = target.iptables_rules();
    present.len() == wanted.len()
        && present.iter().zip(&wanted).all(|(listed, rule)| {
            matches!(&listed.delete, Deletion::Xtables { args, .. } if args.get(2..) == Some(rule))
        })
}

/// Kisara's rules in `nft -a list table inet kisara_isolation` output.
fn parse_nft(listing: &str) -> Vec<ListedRule> {
    let mut chain = None;
    let mut rules = Vec::new();
    for line in listing.lines() {
        let words = words(line);
        if words.first().map(String::as_str) == Some("chain") {
            chain = words.get(1).cloned();
            continue;
        }
        let (Some(chain), Some(comment), Some(handle)) = (
            chain.as_ref(),
            value_after(&words, "comment"),
            value_after(&words, "handle").and_then(|h| h.parse().ok()),
        ) else {
            continue;
        };
        let Some(network) = network_of_comment(comment) else {
            continue;
        };
        let Some(bridge) =
            value_after(&words, "iifname").or_else(|| value_after(&words, "oifname"))
        else {
            continue;
        };
        let Some(target) = BridgeName::parse(bridge)
            .and_then(|bridge| IsolatedNetwork::new(bridge, network))
            .ok()
        else {
            continue;
        };
        rules.push(ListedRule {
            target,
            delete: Deletion::Nft {
                chain: chain.clone(),
                handle,
            },
        });
    }
    rules
}

/// The `nft` commands creating Kisara's table and its two base chains (a
/// priority before the filter hooks', so a drop here is final).
fn nft_prelude() -> String {
    format!(
        "add table inet {NFT_TABLE}\n\
         add chain inet {NFT_TABLE} input {{ type filter hook input priority filter - 1; policy accept; }}\n\
         add chain inet {NFT_TABLE} forward {{ type filter hook forward priority filter - 1; policy accept; }}\n"
    )
}

impl Firewall {
    /// The firewall tool that works here: `iptables` with `ip6tables`
    /// (what Docker itself uses), else `nft`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] naming every command tried and why it failed
    /// (typically: not root, or not installed), and how to turn
    /// enforcement off.
    pub async fn detect() -> Result<Self> {
        Self::detect_among("iptables", "ip6tables", "nft").await
    }

    /// [`Self::detect`] among programs of these names.
    pub async fn detect_among(ipv4: &str, ipv6: &str, nft: &str) -> Result<Self> {
        let mut tried = Vec::new();
        match (
            xtables(ipv4, &["-S", "INPUT"]).await,
            xtables(ipv6, &["-S", "INPUT"]).await,
        ) {
            (Ok(_), Ok(_)) => {
                return Ok(Self::Iptables {
                    ipv4: ipv4.to_owned(),
                    ipv6: ipv6.to_owned(),
                });
            }
            (v4, v6) => tried.extend([v4.err(), v6.err()].into_iter().flatten()),
        }
        match run(nft, &["list", "tables"], None).await {
            Ok(_) => Ok(Self::Nft {
                program: nft.to_owned(),
            }),
            Err(failure) => {
                tried.push(failure);
                let tried: Vec<String> = tried.iter().map(ToString::to_string).collect();
                Err(Error::unavailable(format!(
                    "network isolation: no firewall tool works on this host; tried {}. Run the runtime as \
                     root (it needs CAP_NET_ADMIN) on the engine's host with iptables or nft installed, or \
                     turn enforcement off explicitly (`internal_isolation = \"off\"` in [agent], or DockerOptions::isolation = Isolation::Off) and accept \
                     that containers on internal networks reach the host's services",
                    tried.join("; ")
                )))
            }
        }
    }

    /// The programs this firewall runs.
    fn xtables_programs(&self) -> Vec<&str> {
        match self {
            Self::Iptables { ipv4, ipv6 } => vec![ipv4, ipv6],
            Self::Nft { .. } => Vec::new(),
        }
    }

    /// Kisara's rules as `program` lists them: from the whole table, where
    /// a missing chain is simply absent (its own listing would fail with a
    /// message that differs between backends).
    async fn listed_xtables(program: &str) -> Result<Vec<ListedRule>> {
        Ok(parse_xtables(program, &xtables(program, &["-S"]).await?))
    }

    /// Kisara's rules as the firewall lists them.
    async fn listed(&self) -> Result<Vec<ListedRule>> {
        match self {
            Self::Iptables { .. } => {
                let mut rules = Vec::new();
                for program in self.xtables_programs() {
                    rules.extend(Self::listed_xtables(program).await?);
                }
                Ok(rules)
            }
            Self::Nft { program } => {
                match run(program, &["-a", "list", "table", "inet", NFT_TABLE], None).await {
                    Ok(listing) => Ok(parse_nft(&listing)),
                    // No table yet: no rules.
                    Err(failure) if failure.reason.contains("No such file") => Ok(Vec::new()),
                    Err(failure) => Err(failure.into()),
                }
            }
        }
    }

    /// The networks with rules installed, each once.
    ///
    /// # Errors
    ///
    /// When the firewall cannot be listed.
    pub async fn installed(&self) -> Result<Vec<IsolatedNetwork>> {
        let unique: BTreeSet<IsolatedNetwork> =
            self.listed().await?.into_iter().map(|r| r.target).collect();
        Ok(unique.into_iter().collect())
    }

    /// Creates the chain when missing, and makes a jump to it the first
    /// rule of `INPUT` and of `DOCKER-USER` (`FORWARD` without one), from
    /// one listing of the table, which it returns Kisara's rules of.
    async fn prepare_xtables(program: &str) -> Result<Vec<ListedRule>> {
        let listing = xtables(program, &["-S"]).await?;
        let lines: Vec<&str> = listing.lines().collect();
        let defines = |chain: &str| lines.iter().any(|l| *l == format!("-N {chain}"));
        if !defines(ISOLATION_CHAIN) {
            // Another runtime may create it at the same moment: look again.
            if let Err(failure) = xtables(program, &["-N", ISOLATION_CHAIN]).await {
                xtables(program, &["-S", ISOLATION_CHAIN])
                    .await
                    .map_err(|_| failure)?;
            }
        }
        let forward = if defines("DOCKER-USER") {
            "DOCKER-USER"
        } else {
            "FORWARD"
        };
        for parent in ["INPUT", forward] {
            let appended = format!("-A {parent} ");
            let first = lines
                .iter()
                .find(|l| l.starts_with(&appended))
                .is_some_and(|l| l[appended.len()..] == format!("-j {ISOLATION_CHAIN}"));
            // Missing, or behind a rule that may accept first. A jump left
            // further down is harmless (the chain decides the same twice)
            // and safer than deleting by position in a chain others edit.
            if !first {
                xtables(program, &["-I", parent, "1", "-j", ISOLATION_CHAIN]).await?;
            }
        }
        Ok(parse_xtables(program, &listing))
    }

    /// Installs the rules of `target`; see [`Self::install_all`].
    ///
    /// # Errors
    ///
    /// Naming the firewall command that failed.
    pub async fn install(&self, target: &IsolatedNetwork) -> Result<()> {
        self.install_all(std::slice::from_ref(target)).await
    }

    /// Installs the rules of every target, checked against one listing: a
    /// no-op for a network whose rules are all there, in order; otherwise
    /// a complete set is added before the old rules go, so no network is
    /// ever without them.
    ///
    /// # Errors
    ///
    /// Naming the firewall command that failed.
    pub async fn install_all(&self, targets: &[IsolatedNetwork]) -> Result<()> {
        match self {
            Self::Iptables { .. } => {
                for program in self.xtables_programs() {
                    let listed = Self::prepare_xtables(program).await?;
                    for target in targets {
                        let present: Vec<ListedRule> = listed
                            .iter()
                            .filter(|r| r.target.bridge == target.bridge)
                            .cloned()
                            .collect();
                        if xtables_rules_are_exact(&present, target) {
                            continue;
                        }
                        for rule in &target.iptables_rules() {
                            let append: Vec<&str> = ["-A", ISOLATION_CHAIN]
                                .into_iter()
                                .chain(rule.iter().map(String::as_str))
                                .collect();
                            xtables(program, &append).await?;
                        }
                        // `-D` deletes the first rule matching: the old one.
                        self.delete(present).await?;
                    }
                }
                Ok(())
            }
            Self::Nft { program } => {
                let listed = self.listed().await?;
                // One transaction: the old rules go and the new come at once.
                let mut script = nft_prelude();
                for target in targets {
                    let present: Vec<&ListedRule> = listed
                        .iter()
                        .filter(|r| r.target.bridge == target.bridge)
                        .collect();
                    let wanted = target.nft_rules();
                    if present.len() == wanted.len() && present.iter().all(|r| r.target == *target)
                    {
                        continue;
                    }
                    for rule in present {
                        if let Deletion::Nft { chain, handle } = &rule.delete {
                            script.push_str(&format!(
                                "delete rule inet {NFT_TABLE} {chain} handle {handle}\n"
                            ));
                        }
                    }
                    for (chain, rule) in wanted {
                        script.push_str(&format!("add rule inet {NFT_TABLE} {chain} {rule}\n"));
                    }
                }
                run(program, &["-f", "-"], Some(&script)).await?;
                Ok(())
            }
        }
    }

    /// Deletes these listed rules.
    async fn delete(&self, rules: impl IntoIterator<Item = ListedRule>) -> Result<()> {
        let mut nft_script = String::new();
        for rule in rules {
            match rule.delete {
                Deletion::Xtables { program, args } => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    xtables(&program, &args).await?;
                }
                Deletion::Nft { chain, handle } => nft_script.push_str(&format!(
                    "delete rule inet {NFT_TABLE} {chain} handle {handle}\n"
                )),
            }
        }
        if let (Self::Nft { program }, false) = (self, nft_script.is_empty()) {
            run(program, &["-f", "-"], Some(&nft_script)).await?;
        }
        Ok(())
    }

    /// Removes every rule of `bridge`; a no-op when there is none.
    ///
    /// # Errors
    ///
    /// Naming the firewall command that failed.
    pub async fn remove(&self, bridge: &BridgeName) -> Result<()> {
        let listed = self.listed().await?;
        self.delete(listed.into_iter().filter(|r| r.target.bridge == *bridge))
            .await
    }
}

/// Held while one runtime changes the firewall: every runtime on the host
/// (agents, tests, a restarting agent beside its predecessor) lists, adds
/// and deletes Kisara's rules in several commands, and two of them
/// interleaving would see each other's half-done sets and double them.
/// An exclusive `flock` on one file per host, released when dropped.
#[derive(Debug)]
pub(crate) struct HostLock {
    _file: std::fs::File,
}

/// Takes the [`HostLock`], waiting for another runtime to finish.
pub(crate) async fn host_lock() -> Result<HostLock> {
    tokio::task::spawn_blocking(|| {
        let candidates = [
            std::path::PathBuf::from("/run/kisara-firewall.lock"),
            std::env::temp_dir().join("kisara-firewall.lock"),
        ];
        let mut failures = Vec::new();
        for path in candidates {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path);
            match file {
                Ok(file) => {
                    return rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
                        .map(|()| HostLock { _file: file })
                        .map_err(|e| {
                            Error::unavailable(format!("cannot lock {}: {e}", path.display()))
                        });
                }
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
        Err(Error::unavailable(format!(
            "no firewall lock file could be opened ({})",
            failures.join("; ")
        )))
    })
    .await
    .map_err(|e| Error::unavailable(format!("the firewall lock task failed: {e}")))?
}

impl Firewall {
    /// Removes everything Kisara installed in this firewall: the chain and
    /// the jumps to it, or the table. For a host that turns enforcement
    /// off; a no-op when nothing is there.
    ///
    /// # Errors
    ///
    /// Naming the firewall command that failed.
    pub async fn uninstall(&self) -> Result<()> {
        match self {
            Self::Iptables { .. } => {
                for program in self.xtables_programs() {
                    let listing = xtables(program, &["-S"]).await?;
                    if !listing
                        .lines()
                        .any(|l| l == format!("-N {ISOLATION_CHAIN}"))
                    {
                        continue;
                    }
                    for parent in ["INPUT", "DOCKER-USER", "FORWARD"] {
                        // Each jump once, but a hand-made copy too.
                        while xtables(program, &["-D", parent, "-j", ISOLATION_CHAIN])
                            .await
                            .is_ok()
                        {}
                    }
                    xtables(program, &["-F", ISOLATION_CHAIN]).await?;
                    xtables(program, &["-X", ISOLATION_CHAIN]).await?;
                }
                Ok(())
            }
            Self::Nft { program } => {
                if run(program, &["list", "table", "inet", NFT_TABLE], None)
                    .await
                    .is_ok()
                {
                    run(program, &["delete", "table", "inet", NFT_TABLE], None).await?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kisara_core::ErrorKind;

    #[test]
    fn bridge_names_are_checked_and_derived() {
        let derived = BridgeName::for_network("team-7");
        assert_eq!(derived.as_str().len(), 15);
        assert!(derived.as_str().starts_with("kis-"));
        assert_eq!(derived, BridgeName::for_network("team-7"));
        assert_ne!(derived, BridgeName::for_network("team-8"));
        assert_eq!(BridgeName::parse(derived.as_str()).unwrap(), derived);
        assert_eq!(
            BridgeName::docker_default("0123456789abcdef")
                .unwrap()
                .as_str(),
            "br-0123456789ab"
        );
        for bad in ["", "-x", "a b", "sixteen-chars-xx", "x;rm", "é"] {
            let err = BridgeName::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = IsolatedNetwork::new(derived, "bad\"name").unwrap_err();
        assert!(err.to_string().contains("bad\\\"name"), "{err}");
    }

    #[test]
    fn xtables_listings_parse_into_deletions() {
        let target =
            IsolatedNetwork::new(BridgeName::parse("kis-0123456789a").unwrap(), "net-1").unwrap();
        let listing = "-N KISARA-ISOLATION\n\
            -A KISARA-ISOLATION -i kis-0123456789a -o kis-0123456789a -m comment --comment \"kisara-network:net-1\" -j RETURN\n\
            -A KISARA-ISOLATION -o kis-0123456789a -m comment --comment kisara-network:net-1 -j DROP\n\
            -A KISARA-ISOLATION -i eth0 -m comment --comment \"someone else\" -j DROP\n\
            -A INPUT -i kis-0123456789a -m comment --comment kisara-network:net-1 -j DROP\n";
        let rules = parse_xtables("iptables", listing);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(rules.iter().all(|r| r.target == target));
        let Deletion::Xtables { args, .. } = &rules[1].delete else {
            panic!("{rules:?}")
        };
        assert_eq!(
            args.join(" "),
            "-D KISARA-ISOLATION -o kis-0123456789a -m comment --comment kisara-network:net-1 -j DROP"
        );
    }

    #[test]
    fn rules_as_iptables_lists_them_are_recognised_as_complete() {
        // `iptables -S` of iptables v1.8.9 (nf_tables) after installing.
        let listing = "-N KISARA-ISOLATION\n\
            -A KISARA-ISOLATION -i kis-df40789e7ab -o kis-df40789e7ab -m comment --comment \"kisara-network:kdn-a10ca5514f49\" -j RETURN\n\
            -A KISARA-ISOLATION -i kis-df40789e7ab -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"kisara-network:kdn-a10ca5514f49\" -j RETURN\n\
            -A KISARA-ISOLATION -i kis-df40789e7ab -m comment --comment \"kisara-network:kdn-a10ca5514f49\" -j DROP\n\
            -A KISARA-ISOLATION -o kis-df40789e7ab -m comment --comment \"kisara-network:kdn-a10ca5514f49\" -j DROP\n";
        let target = IsolatedNetwork::new(
            BridgeName::parse("kis-df40789e7ab").unwrap(),
            "kdn-a10ca5514f49",
        )
        .unwrap();
        let listed = parse_xtables("iptables", listing);
        assert!(xtables_rules_are_exact(&listed, &target));
        // A rule missing, or the order changed: not complete.
        assert!(!xtables_rules_are_exact(&listed[1..], &target));
        let mut swapped = listed;
        swapped.swap(1, 2);
        assert!(!xtables_rules_are_exact(&swapped, &target));
    }

    #[test]
    fn nft_listings_parse_into_handles() {
        let listing = "table inet kisara_isolation {\n\
            \tchain input {\n\
            \t\ttype filter hook input priority filter - 1; policy accept;\n\
            \t\tiifname \"kis-0123456789a\" drop comment \"kisara-network:net-1\" # handle 5\n\
            \t}\n\
            \tchain forward {\n\
            \t\toifname \"kis-0123456789a\" drop comment \"kisara-network:net-1\" # handle 9\n\
            \t\tiifname \"eth0\" drop # handle 10\n\
            \t}\n}\n";
        let rules = parse_nft(listing);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(
            rules[1].delete,
            Deletion::Nft {
                chain: "forward".to_owned(),
                handle: 9
            }
        );
        assert_eq!(rules[0].target.network, "net-1");
    }

    #[tokio::test]
    async fn no_working_tool_is_unavailable_naming_what_was_tried_and_the_opt_out() {
        let err =
            Firewall::detect_among("kisara-no-iptables", "kisara-no-ip6tables", "kisara-no-nft")
                .await
                .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let text = err.to_string();
        for expected in [
            "kisara-no-iptables -w",
            "kisara-no-ip6tables -w",
            "kisara-no-nft list tables",
            "root",
            "Isolation::Off",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in {text}");
        }
    }
}
