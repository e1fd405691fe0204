//! The policy as written: the `[policy]` table of a config file, or built in
//! code. [`super::RulePolicy::new`] checks and compiles it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a rule or a default decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The command may run.
    Allow,
    /// The command must not run.
    Deny,
}

/// What happens to input the shell splitter cannot judge word by word
/// (`$(...)`, backticks, `eval`, variables, redirections, here-documents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnparsableMode {
    /// Denied, naming what could not be parsed.
    #[default]
    Deny,
    /// Allowed; the audit log keeps the line as it was typed.
    AllowAudited,
}

/// A whole policy: ordered rules, first match wins, then the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The decision when no rule matches and no role default applies.
    #[serde(default = "deny")]
    pub default: Decision,
    /// What happens to input the splitter cannot judge.
    #[serde(default)]
    pub unparsable: UnparsableMode,
    /// The decision per role when no rule matches. An identity holding
    /// several of these roles is allowed when any of them allows: roles grant.
    #[serde(default)]
    pub role_defaults: BTreeMap<String, Decision>,
    /// The rules, tried in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

fn deny() -> Decision {
    Decision::Deny
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            default: Decision::Deny,
            unparsable: UnparsableMode::Deny,
            role_defaults: BTreeMap::new(),
            rules: Vec::new(),
        }
    }
}

/// One rule. Every condition given must hold; a condition left out holds
/// for every command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Shown in denials and traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the rule decides when it matches.
    pub decision: Decision,
    /// The identity holds one of these roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The container's `owner` label matches one of these patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// The container's `module` label matches one of these patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// The program matches one of these patterns: by its base name (`rm`
    /// matches `/bin/rm`), or the whole path when the pattern has a `/`.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub program: Vec<String>,
    /// Conditions on the arguments (the words after the program).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgSpec>,
}

/// A condition on the arguments; give exactly one of `any`, `all`, `at`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgSpec {
    /// Some argument matches one of these patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<String>>,
    /// Every argument matches one of these patterns (true without
    /// arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<String>>,
    /// The argument at this position (1 is the first after the program)
    /// matches one of the patterns in `is`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<usize>,
    /// The patterns for `at`.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub is: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a pattern or a list of patterns")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl RuleSpec {
    /// A rule deciding `decision` for every command, to narrow with the
    /// builder methods.
    pub fn new(decision: Decision) -> Self {
        Self {
            name: None,
            decision,
            roles: Vec::new(),
            owners: Vec::new(),
            modules: Vec::new(),
            program: Vec::new(),
            args: Vec::new(),
        }
    }

    /// An allowing rule.
    pub fn allow() -> Self {
        Self::new(Decision::Allow)
    }

    /// A denying rule.
    pub fn deny() -> Self {
        Self::new(Decision::Deny)
    }

    /// Names the rule.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only for identities with one of `roles`.
    pub fn roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Self {
        self.roles.extend(roles.into_iter().map(Into::into));
        self
    }

    /// Only in containers whose `module` label matches one of `patterns`.
    pub fn modules<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.modules.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Only in containers whose `owner` label matches one of `patterns`.
    pub fn owners<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.owners.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Only for programs matching one of `patterns`.
    pub fn program<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.program.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Only when some argument matches one of `patterns`.
    pub fn any_arg<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.args.push(ArgSpec {
            any: Some(patterns.into_iter().map(Into::into).collect()),
            ..ArgSpec::default()
        });
        self
    }

    /// Only when every argument matches one of `patterns`.
    pub fn all_args<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.args.push(ArgSpec {
            all: Some(patterns.into_iter().map(Into::into).collect()),
            ..ArgSpec::default()
        });
        self
    }

    /// Only when the argument at `position` (from 1) matches one of
    /// `patterns`.
    pub fn arg_at<S: Into<String>>(
        mut self,
        position: usize,
        patterns: impl IntoIterator<Item = S>,
    ) -> Self {
        self.args.push(ArgSpec {
            at: Some(position),
            is: patterns.into_iter().map(Into::into).collect(),
            ..ArgSpec::default()
        });
        self
    }
}
