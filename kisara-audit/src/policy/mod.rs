//! [`RulePolicy`]: ordered command rules over roles, container labels,
//! programs and arguments, judging shell input command by command.

mod pattern;
pub mod shell;
mod spec;
mod unwrap;

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::Path;

use async_trait::async_trait;
use kisara_core::{CommandContext, CommandPolicy, PolicyDecision};

use crate::AuditError;
use pattern::Pattern;
use shell::{Unparsable, Word, split_list};
pub use spec::{ArgSpec, Decision, PolicySpec, RuleSpec, UnparsableMode};
use unwrap::{Unwrapped, basename, unwrap};

/// How deep `sh -c 'sh -c ...'` may nest before the input counts as
/// unparsable.
const MAX_SCRIPT_DEPTH: usize = 8;

/// A [`CommandPolicy`] of ordered rules; see the crate README for the file
/// format, the unwrapping of runners and shells, and the limits.
#[derive(Debug, Clone)]
pub struct RulePolicy {
    rules: Vec<Rule>,
    /// Rules whose programs are all exact words, by base name: the only
    /// ones a command of that program needs to try besides `any_program`.
    by_program: HashMap<String, Vec<usize>>,
    /// Rules that may match any program (none given, or a glob or regex).
    any_program: Vec<usize>,
    default: Decision,
    role_defaults: Vec<(String, Decision)>,
    unparsable: UnparsableMode,
}

#[derive(Debug, Clone)]
struct Rule {
    index: usize,
    name: Option<String>,
    decision: Decision,
    roles: Vec<String>,
    owners: Vec<Pattern>,
    modules: Vec<Pattern>,
    programs: Vec<Pattern>,
    args: Vec<ArgCondition>,
}

#[derive(Debug, Clone)]
enum ArgCondition {
    Any(Vec<Pattern>),
    All(Vec<Pattern>),
    At(usize, Vec<Pattern>),
}

/// One step of an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceStep {
    /// A simple command, after its runners came off (for a shell's `-c`,
    /// the whole command; its script follows).
    Command {
        /// How deep in `sh -c` scripts (0 for the input itself).
        depth: usize,
        /// The runners taken off (`env`, `busybox`, ...).
        runners: Vec<String>,
        /// The program and arguments judged.
        words: Vec<String>,
    },
    /// A shell's `-c` script, split again.
    Script {
        /// How deep.
        depth: usize,
        /// The script.
        script: String,
    },
    /// Input that cannot be judged word by word.
    Unparsable {
        /// How deep.
        depth: usize,
        /// What could not be parsed.
        reason: String,
        /// What the policy's unparsable mode decided.
        decision: Decision,
    },
    /// A rule tried on the last command.
    Rule {
        /// The rule's index.
        index: usize,
        /// Its name.
        name: Option<String>,
        /// Whether it matched (and so decided).
        matched: bool,
        /// What matched, or the first condition that did not.
        why: String,
    },
    /// No rule matched the last command: a default decided.
    Default {
        /// The decision.
        decision: Decision,
        /// Which default (a role's, or the overall one).
        why: String,
    },
}

/// The whole trace of a decision, for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision, as [`CommandPolicy::check`] gives it.
    pub decision: PolicyDecision,
    /// Each simple command and each rule tried on it, in order.
    pub steps: Vec<TraceStep>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut depth = 0;
        for step in &self.steps {
            match step {
                TraceStep::Command {
                    depth: d,
                    runners,
                    words,
                } => {
                    depth = *d;
                    write!(f, "{:indent$}command {words:?}", "", indent = 2 * depth)?;
                    if !runners.is_empty() {
                        write!(f, " (run through {})", runners.join(", "))?;
                    }
                    writeln!(f)?;
                }
                TraceStep::Script { depth: d, script } => {
                    depth = *d;
                    writeln!(f, "{:indent$}script {script:?}", "", indent = 2 * depth)?;
                }
                TraceStep::Unparsable {
                    depth: d,
                    reason,
                    decision,
                } => writeln!(
                    f,
                    "{:indent$}unparsable: {reason} -> {decision:?}",
                    "",
                    indent = 2 * d
                )?,
                TraceStep::Rule {
                    index,
                    name,
                    matched,
                    why,
                } => writeln!(
                    f,
                    "{:indent$}  {} {}: {why}",
                    "",
                    if *matched { "matched" } else { "skipped" },
                    rule_label(*index, name.as_deref()),
                    indent = 2 * depth
                )?,
                TraceStep::Default { decision, why } => writeln!(
                    f,
                    "{:indent$}  {why} -> {decision:?}",
                    "",
                    indent = 2 * depth
                )?,
            }
        }
        match &self.decision {
            PolicyDecision::Allow => writeln!(f, "allowed"),
            PolicyDecision::Deny { reason } => writeln!(f, "denied: {reason}"),
        }
    }
}

fn rule_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("rule #{index} {name:?}"),
        None => format!("rule #{index}"),
    }
}

impl RulePolicy {
    /// Checks and compiles `spec`; a bad rule is an error naming its index,
    /// its name, the field and the bad value.
    pub fn new(spec: PolicySpec) -> Result<Self, AuditError> {
        Self::compile(spec, "<code>")
    }

    /// Reads the `[policy]` table of a whole config file (other tables are
    /// left to their owners). A file without `[policy]` is an error: a
    /// server asked to enforce a policy must not run without one.
    pub fn from_toml_str(config: &str, origin: &str) -> Result<Self, AuditError> {
        let policy_error = |message: String| AuditError::Policy {
            origin: origin.to_owned(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(config).map_err(|e| policy_error(e.to_string()))?;
        let policy = table
            .remove("policy")
            .ok_or_else(|| policy_error("there is no [policy] table".to_owned()))?;
        let toml::Value::Table(policy) = policy else {
            return Err(policy_error(format!(
                "`policy` must be a table, not {policy}"
            )));
        };
        Self::from_table(policy, origin)
    }

    /// Reads a `[policy]` table already parsed (a config file's
    /// `kisara_core::config::Config::policy`); `origin` names where it came
    /// from in errors.
    pub fn from_table(mut policy: toml::Table, origin: &str) -> Result<Self, AuditError> {
        let policy_error = |message: String| AuditError::Policy {
            origin: origin.to_owned(),
            message,
        };
        // Rules one by one, so an error names the rule it is in.
        let rules = match policy.remove("rules") {
            None => Vec::new(),
            Some(toml::Value::Array(rules)) => rules,
            Some(other) => {
                return Err(policy_error(format!(
                    "`policy.rules` must be an array of tables, not {other}"
                )));
            }
        };
        let mut spec: PolicySpec =
            toml::Value::Table(policy.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let message = e.message().trim();
                    policy_error(match failing_key::<PolicySpec>(&policy, None) {
                        Some((field, value)) => {
                            format!("[policy]: field `{field}`: {message} (value: {value})")
                        }
                        None => format!("[policy]: {message}"),
                    })
                })?;
        for (index, rule) in rules.into_iter().enumerate() {
            let name = rule
                .get("name")
                .and_then(toml::Value::as_str)
                .map(str::to_owned);
            let rule: RuleSpec = rule.clone().try_into().map_err(|e: toml::de::Error| {
                let message = e.message().trim();
                let failing = rule.as_table().and_then(|table| {
                    failing_key::<RuleSpec>(table, Some(("decision", &toml::Value::from("deny"))))
                });
                let (field, message) = match failing {
                    Some((field, value)) => (field, format!("{message} (value: {value})")),
                    None => (field_of(message), message.to_owned()),
                };
                AuditError::PolicyRule {
                    origin: origin.to_owned(),
                    index,
                    name,
                    field,
                    message,
                }
            })?;
            spec.rules.push(rule);
        }
        Self::compile(spec, origin)
    }

    /// Reads the `[policy]` table of the config file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref();
        let config = std::fs::read_to_string(path).map_err(|source| AuditError::PolicyRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&config, &path.display().to_string())
    }

    fn compile(spec: PolicySpec, origin: &str) -> Result<Self, AuditError> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (index, rule) in spec.rules.into_iter().enumerate() {
            let name = rule.name.clone();
            rules.push(Rule::compile(index, rule).map_err(|(field, message)| {
                AuditError::PolicyRule {
                    origin: origin.to_owned(),
                    index,
                    name,
                    field,
                    message,
                }
            })?);
        }
        let mut by_program: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_program = Vec::new();
        for rule in &rules {
            let exact: Option<Vec<&str>> = rule
                .programs
                .iter()
                .map(|p| p.exact().map(basename))
                .collect();
            match exact {
                Some(names) if !names.is_empty() => {
                    for name in names {
                        let indices = by_program.entry(name.to_owned()).or_default();
                        if indices.last() != Some(&rule.index) {
                            indices.push(rule.index);
                        }
                    }
                }
                _ => any_program.push(rule.index),
            }
        }
        Ok(Self {
            rules,
            by_program,
            any_program,
            default: spec.default,
            role_defaults: spec.role_defaults.into_iter().collect(),
            unparsable: spec.unparsable,
        })
    }

    /// Judges a line of shell input: every simple command in it must be
    /// allowed. A line with nothing to run (a comment) is allowed; an empty
    /// one is [`kisara_core::Error::Invalid`].
    pub fn check_line(
        &self,
        context: &CommandContext,
        line: &str,
    ) -> kisara_core::Result<PolicyDecision> {
        if line.trim().is_empty() {
            return Err(kisara_core::Error::invalid(
                "command",
                "the command line is empty",
            ));
        }
        Ok(self.judge_script(context, line, 0, &mut None))
    }

    /// Judges an argv (an exec's program and arguments), as
    /// [`CommandPolicy::check`] does, without the async.
    pub fn check_argv(
        &self,
        context: &CommandContext,
        command: &[String],
    ) -> kisara_core::Result<PolicyDecision> {
        if command.is_empty() {
            return Err(kisara_core::Error::invalid(
                "command",
                "the command is empty",
            ));
        }
        let words: Vec<Word> = command.iter().map(Word::literal).collect();
        Ok(self.judge_words(context, &words, 0, &mut None))
    }

    /// The whole trace of judging the argv `command`: each simple command
    /// (after unwrapping), each rule tried and why it matched or not.
    pub fn explain(&self, context: &CommandContext, command: &[String]) -> Explanation {
        let words: Vec<Word> = command.iter().map(Word::literal).collect();
        let mut steps = Vec::new();
        let decision = self.judge_words(context, &words, 0, &mut Some(&mut steps));
        Explanation { decision, steps }
    }

    /// The whole trace of judging a line of shell input.
    pub fn explain_line(&self, context: &CommandContext, line: &str) -> Explanation {
        let mut steps = Vec::new();
        let decision = self.judge_script(context, line, 0, &mut Some(&mut steps));
        Explanation { decision, steps }
    }

    fn judge_script(
        &self,
        context: &CommandContext,
        script: &str,
        depth: usize,
        trace: &mut Option<&mut Vec<TraceStep>>,
    ) -> PolicyDecision {
        if let Some(steps) = trace {
            steps.push(TraceStep::Script {
                depth,
                script: script.to_owned(),
            });
        }
        let commands = match split_list(script) {
            Ok(commands) => commands,
            Err(unparsable) => return self.unparsable(script, &unparsable, depth, trace),
        };
        // Every command is judged (and traced) even after a denial, so the
        // trace shows the whole line; the first denial is the answer.
        let mut decision = PolicyDecision::Allow;
        for (words, _) in &commands {
            let judged = self.judge_words(context, words, depth, trace);
            if decision.is_allowed() && !judged.is_allowed() {
                decision = judged;
                if trace.is_none() {
                    break;
                }
            }
        }
        decision
    }

    fn judge_words(
        &self,
        context: &CommandContext,
        words: &[Word],
        depth: usize,
        trace: &mut Option<&mut Vec<TraceStep>>,
    ) -> PolicyDecision {
        let all_words = words;
        if let Some(word) = words.iter().find(|w| w.may_expand_to_parent()) {
            let unparsable = Unparsable::new(format!(
                "file name pattern {:?} may expand to \"..\"",
                word.text
            ));
            return self.unparsable(&joined(all_words), &unparsable, depth, trace);
        }
        let (runners, words) = match unwrap(words) {
            Ok(Unwrapped::Command { runners, words }) => (runners, words),
            Ok(Unwrapped::Script { runners, script }) => {
                if let Some(steps) = trace {
                    steps.push(TraceStep::Command {
                        depth,
                        runners: runners.iter().map(|r| (*r).to_owned()).collect(),
                        words: all_words.iter().map(|w| w.text.clone()).collect(),
                    });
                }
                if depth + 1 >= MAX_SCRIPT_DEPTH {
                    let unparsable = Unparsable::new(format!(
                        "shell scripts nested deeper than {MAX_SCRIPT_DEPTH}"
                    ));
                    return self.unparsable(script, &unparsable, depth + 1, trace);
                }
                return self.judge_script(context, script, depth + 1, trace);
            }
            Err(unparsable) => {
                return self.unparsable(&joined(all_words), &unparsable, depth, trace);
            }
        };
        if let Some(steps) = trace {
            steps.push(TraceStep::Command {
                depth,
                runners: runners.iter().map(|r| (*r).to_owned()).collect(),
                words: words.iter().map(|w| w.text.clone()).collect(),
            });
        }
        let Some((program, args)) = words.split_first() else {
            // Only assignments: nothing runs.
            return PolicyDecision::Allow;
        };
        let rule = match trace {
            Some(steps) => self.rules.iter().find(|rule| {
                let mut why = String::new();
                let matched = rule.matches(context, &program.text, args, Some(&mut why));
                steps.push(TraceStep::Rule {
                    index: rule.index,
                    name: rule.name.clone(),
                    matched,
                    why,
                });
                matched
            }),
            None => self
                .candidates(basename(&program.text))
                .map(|index| &self.rules[index])
                .find(|rule| rule.matches(context, &program.text, args, None)),
        };
        let command = || joined(words);
        if let Some(rule) = rule {
            return match rule.decision {
                Decision::Allow => PolicyDecision::Allow,
                Decision::Deny => {
                    let mut matched = String::new();
                    rule.matches(context, &program.text, args, Some(&mut matched));
                    PolicyDecision::Deny {
                        reason: format!(
                            "{} denies {:?} ({matched})",
                            rule_label(rule.index, rule.name.as_deref()),
                            command()
                        ),
                    }
                }
            };
        }
        let (decision, role) = self.default_for(context);
        let why = || match role {
            Some(role) => format!("the default for role {role:?}"),
            None => "the overall default".to_owned(),
        };
        if let Some(steps) = trace {
            steps.push(TraceStep::Default {
                decision,
                why: why(),
            });
        }
        match decision {
            Decision::Allow => PolicyDecision::Allow,
            Decision::Deny => PolicyDecision::Deny {
                reason: format!("no rule allows {:?}; {} is deny", command(), why()),
            },
        }
    }

    /// The rules a command of `program` may match, in order.
    fn candidates(&self, program: &str) -> impl Iterator<Item = usize> + '_ {
        let mut named = self
            .by_program
            .get(program)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied()
            .peekable();
        let mut any = self.any_program.iter().copied().peekable();
        std::iter::from_fn(move || match (named.peek(), any.peek()) {
            (Some(&n), Some(&a)) if n < a => named.next(),
            (Some(_), Some(_)) | (None, Some(_)) => any.next(),
            (Some(_), None) => named.next(),
            (None, None) => None,
        })
    }

    /// The default decision for `context`, with the role whose default it
    /// is (none: the overall default). Roles grant: an allowing role wins.
    fn default_for(&self, context: &CommandContext) -> (Decision, Option<&str>) {
        let mut held = self
            .role_defaults
            .iter()
            .filter(|(role, _)| context.identity.has_role(role));
        let Some(first) = held.next() else {
            return (self.default, None);
        };
        let (role, decision) = std::iter::once(first)
            .chain(held)
            .find(|(_, d)| *d == Decision::Allow)
            .unwrap_or(first);
        (*decision, Some(role))
    }

    fn unparsable(
        &self,
        input: &str,
        unparsable: &Unparsable,
        depth: usize,
        trace: &mut Option<&mut Vec<TraceStep>>,
    ) -> PolicyDecision {
        let decision = match self.unparsable {
            UnparsableMode::Deny => Decision::Deny,
            UnparsableMode::AllowAudited => Decision::Allow,
        };
        if let Some(steps) = trace {
            steps.push(TraceStep::Unparsable {
                depth,
                reason: unparsable.reason.clone(),
                decision,
            });
        }
        match decision {
            Decision::Allow => PolicyDecision::Allow,
            Decision::Deny => PolicyDecision::Deny {
                reason: format!("cannot judge {input:?}: {unparsable}; unparsable input is denied"),
            },
        }
    }
}

/// Words as one line, for messages.
fn joined(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| w.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first key of `table` that `T` refuses on its own (beside `required`,
/// a key `T` cannot do without), with its value: which field a
/// deserialisation error is about, since the error itself does not say.
fn failing_key<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    required: Option<(&str, &toml::Value)>,
) -> Option<(String, toml::Value)> {
    table
        .iter()
        .find(|(key, value)| {
            let mut alone = toml::Table::new();
            if let Some((required, default)) = required
                && key.as_str() != required
            {
                alone.insert(required.to_owned(), default.clone());
            }
            alone.insert((*key).clone(), (*value).clone());
            toml::Value::Table(alone).try_into::<T>().is_err()
        })
        .map(|(key, value)| (key.clone(), value.clone()))
}

/// The field a deserialisation error is about, from its message.
fn field_of(message: &str) -> String {
    let quoted = |after: &str| {
        message
            .split_once(after)
            .and_then(|(_, rest)| rest.split('`').nth(1))
            .map(str::to_owned)
    };
    quoted("unknown field")
        .or_else(|| quoted("missing field"))
        .unwrap_or_else(|| "(rule)".to_owned())
}

impl Rule {
    fn compile(index: usize, spec: RuleSpec) -> Result<Self, (String, String)> {
        let patterns = |field: &str, sources: &[String]| {
            sources
                .iter()
                .enumerate()
                .map(|(i, source)| Pattern::parse(source).map_err(|e| (format!("{field}[{i}]"), e)))
                .collect::<Result<Vec<_>, _>>()
        };
        if let Some((i, role)) = spec
            .roles
            .iter()
            .enumerate()
            .find(|(_, r)| r.trim().is_empty())
        {
            return Err((format!("roles[{i}]"), format!("empty role {role:?}")));
        }
        let mut args = Vec::with_capacity(spec.args.len());
        for (i, arg) in spec.args.iter().enumerate() {
            let field = format!("args[{i}]");
            let condition = match (&arg.any, &arg.all, arg.at) {
                (Some(any), None, None) if arg.is.is_empty() => {
                    ArgCondition::Any(patterns(&format!("{field}.any"), any)?)
                }
                (None, Some(all), None) if arg.is.is_empty() => {
                    ArgCondition::All(patterns(&format!("{field}.all"), all)?)
                }
                (None, None, Some(0)) => {
                    return Err((
                        format!("{field}.at"),
                        "position 0 is the program; arguments count from 1".to_owned(),
                    ));
                }
                (None, None, Some(at)) if !arg.is.is_empty() => {
                    ArgCondition::At(at, patterns(&format!("{field}.is"), &arg.is)?)
                }
                _ => {
                    return Err((
                        field,
                        format!("give exactly one of `any`, `all` or `at` with `is`, not {arg:?}"),
                    ));
                }
            };
            if matches!(&condition, ArgCondition::Any(p) | ArgCondition::All(p) if p.is_empty()) {
                return Err((field, "an empty pattern list matches nothing".to_owned()));
            }
            args.push(condition);
        }
        Ok(Self {
            index,
            owners: patterns("owners", &spec.owners)?,
            modules: patterns("modules", &spec.modules)?,
            programs: patterns("program", &spec.program)?,
            name: spec.name,
            decision: spec.decision,
            roles: spec.roles,
            args,
        })
    }

    /// Whether the rule matches; with `why`, says what matched, or the first
    /// condition that did not.
    fn matches(
        &self,
        context: &CommandContext,
        program: &str,
        args: &[Word],
        mut why: Option<&mut String>,
    ) -> bool {
        macro_rules! note {
            ($($arg:tt)*) => {
                if let Some(why) = why.as_deref_mut() {
                    if !why.is_empty() {
                        why.push_str("; ");
                    }
                    let _ = write!(why, $($arg)*);
                }
            };
        }
        if !self.roles.is_empty() {
            match self.roles.iter().find(|r| context.identity.has_role(r)) {
                Some(role) => note!("role {role:?}"),
                None => {
                    note!("the identity holds none of the roles {:?}", self.roles);
                    return false;
                }
            }
        }
        for (label, value, patterns) in [
            ("owner", &context.owner, &self.owners),
            ("module", &context.module, &self.modules),
        ] {
            if patterns.is_empty() {
                continue;
            }
            match value.as_deref().and_then(|value| {
                patterns
                    .iter()
                    .find(|p| p.matches(value))
                    .map(|p| (value, p))
            }) {
                Some((value, pattern)) => note!("{label} {value:?} ~ {:?}", pattern.source()),
                None => {
                    note!("{label} {value:?} matches none of {:?}", sources(patterns));
                    return false;
                }
            }
        }
        if !self.programs.is_empty() {
            let found = self.programs.iter().find(|p| {
                if p.source().contains('/') {
                    p.matches(program)
                } else {
                    p.matches(basename(program))
                }
            });
            match found {
                Some(pattern) => note!("program {program:?} ~ {:?}", pattern.source()),
                None => {
                    note!(
                        "program {program:?} matches none of {:?}",
                        sources(&self.programs)
                    );
                    return false;
                }
            }
        }
        for condition in &self.args {
            match condition {
                ArgCondition::Any(patterns) => {
                    let found = args.iter().find_map(|arg| {
                        patterns
                            .iter()
                            .find(|p| p.matches(&arg.text))
                            .map(|p| (arg, p))
                    });
                    match found {
                        Some((arg, pattern)) => {
                            note!("argument {:?} ~ {:?}", arg.text, pattern.source());
                        }
                        None => {
                            note!("no argument matches any of {:?}", sources(patterns));
                            return false;
                        }
                    }
                }
                ArgCondition::All(patterns) => {
                    match args
                        .iter()
                        .find(|arg| !patterns.iter().any(|p| p.matches(&arg.text)))
                    {
                        Some(arg) => {
                            note!(
                                "argument {:?} matches none of {:?}",
                                arg.text,
                                sources(patterns)
                            );
                            return false;
                        }
                        None => note!("every argument matches one of {:?}", sources(patterns)),
                    }
                }
                ArgCondition::At(at, patterns) => {
                    let arg = args.get(at - 1);
                    match arg.and_then(|arg| patterns.iter().find(|p| p.matches(&arg.text))) {
                        Some(pattern) => note!(
                            "argument {at} {:?} ~ {:?}",
                            arg.map(|a| a.text.as_str()).unwrap_or_default(),
                            pattern.source()
                        ),
                        None => {
                            note!(
                                "argument {at} {:?} matches none of {:?}",
                                arg.map(|a| a.text.as_str()),
                                sources(patterns)
                            );
                            return false;
                        }
                    }
                }
            }
        }
        if why.as_deref().is_some_and(String::is_empty) {
            note!("no conditions: matches every command");
        }
        true
    }
}

fn sources(patterns: &[Pattern]) -> Vec<&str> {
    patterns.iter().map(Pattern::source).collect()
}

#[async_trait]
impl CommandPolicy for RulePolicy {
    async fn check(
        &self,
        context: &CommandContext,
        command: &[String],
    ) -> kisara_core::Result<PolicyDecision> {
        self.check_argv(context, command)
    }
}
