//! A small POSIX-shell word splitter: lists and pipelines of simple commands
//! with quotes and backslash escapes. Whatever it cannot know without running
//! a shell (expansions, substitutions, redirections, compound commands) is
//! [`Unparsable`], never guessed.

use std::fmt;

/// One word of a simple command, its quotes removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word's text.
    pub text: String,
    /// It holds an unquoted `*`, `?` or `[...]`: the shell expands it to
    /// file names, so it is matched as written.
    pub globbing: bool,
}

impl Word {
    /// A word taken as it is (an exec's argument, no shell in between).
    pub fn literal(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            globbing: false,
        }
    }

    /// Whether the shell may expand this word to a path through `..`: a
    /// pattern component that starts with a dot (`.*`, `.?`) matches `..`,
    /// which lexical normalisation cannot see.
    pub(crate) fn may_expand_to_parent(&self) -> bool {
        self.globbing
            && self
                .text
                .split('/')
                .any(|part| part.starts_with('.') && part.contains(['*', '?', '[']))
    }
}

/// Why a command line cannot be judged word by word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsable {
    /// What the splitter met, naming it (`command substitution "$("`).
    pub reason: String,
}

impl Unparsable {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Unparsable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Reserved words a shell runs the rest of the simple command after
/// (`if rm -rf /; then ...`): dropped before the program.
const TRANSPARENT_RESERVED: &[&str] = &[
    "!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "time",
];

/// Reserved words that open constructs this splitter does not follow.
const OPAQUE_RESERVED: &[&str] = &["for", "case", "select", "function", "coproc", "[[", "esac"];

/// Splits `line` into its simple commands (separated by `;`, `&`, `&&`,
/// `||`, `|`, `|&` or newlines), each as words without quotes. Leading
/// reserved words that run the rest (`if`, `then`, `!`, `{`, ...) are
/// dropped; empty commands are left out.
pub fn split_commands(line: &str) -> Result<Vec<Vec<Word>>, Unparsable> {
    Ok(split_list(line)?
        .into_iter()
        .map(|(words, _)| words)
        .collect())
}

/// [`split_commands`], with the operator after each command (`;`, `&&`,
/// `||`, `|`, `|&`, `&`; a newline is `;`, the last command has `""`).
pub fn split_list(line: &str) -> Result<Vec<(Vec<Word>, &'static str)>, Unparsable> {
    let mut splitter = Splitter::default();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => splitter.end_word()?,
            '\n' | ';' => {
                if c == ';' && chars.peek() == Some(&';') {
                    return Err(Unparsable::new("case terminator \";;\""));
                }
                splitter.end_command(";")?;
            }
            '|' => {
                // `||`, `|&` and `|` all separate simple commands.
                let operator = match chars.peek() {
                    Some('|') => "||",
                    Some('&') => "|&",
                    _ => "|",
                };
                if operator.len() == 2 {
                    chars.next();
                }
                splitter.end_command(operator)?;
            }
            '&' => {
                let operator = match chars.peek() {
                    Some('&') => "&&",
                    Some('>') => return Err(Unparsable::new("redirection \"&>\"")),
                    _ => "&",
                };
                if operator.len() == 2 {
                    chars.next();
                }
                splitter.end_command(operator)?;
            }
            '\'' => {
                splitter.in_word = true;
                splitter.quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => splitter.word.push(c),
                        None => return Err(Unparsable::new("unbalanced single quote")),
                    }
                }
            }
            '"' => {
                splitter.in_word = true;
                splitter.quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('$' | '`' | '"' | '\\')) => splitter.word.push(c),
                            Some(c) => {
                                splitter.word.push('\\');
                                splitter.word.push(c);
                            }
                            None => return Err(Unparsable::new("unbalanced double quote")),
                        },
                        Some('$') => {
                            check_dollar(chars.peek().copied())?;
                            splitter.word.push('$');
                        }
                        Some('`') => return Err(Unparsable::new("command substitution \"`\"")),
                        Some('!') if history_expansion(chars.peek().copied()) => {
                            return Err(Unparsable::new("history expansion \"!\""));
                        }
                        Some(c) => splitter.word.push(c),
                        None => return Err(Unparsable::new("unbalanced double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation joins the lines.
                Some('\n') => {}
                Some(c) => {
                    splitter.in_word = true;
                    splitter.quoted = true;
                    splitter.word.push(c);
                }
                None => return Err(Unparsable::new("the line ends in a backslash")),
            },
            '$' => {
                let next = chars.peek().copied();
                if matches!(next, Some('\'' | '"')) {
                    return Err(Unparsable::new(format!(
                        "quoting \"${}\"",
                        next.unwrap_or_default()
                    )));
                }
                check_dollar(next)?;
                splitter.push_unquoted('$');
            }
            '`' => return Err(Unparsable::new("command substitution \"`\"")),
            '(' | ')' => {
                return Err(Unparsable::new(format!(
                    "subshell, function or substitution {c:?}"
                )));
            }
            '<' | '>' => {
                let next = chars.peek().copied();
                let descriptor = splitter.word.is_empty()
                    || splitter.word.chars().all(|d| d.is_ascii_digit()) && !splitter.quoted;
                if descriptor && next == Some('&') {
                    // `2>&1`, `>&2`, `<&0`, `>&-`: descriptors only, no file.
                    chars.next();
                    let mut target = String::new();
                    while let Some(&d) = chars.peek() {
                        if d.is_ascii_digit() || d == '-' {
                            target.push(d);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    let ends_word = chars.peek().is_none_or(|d| " \t\n;&|".contains(*d));
                    if target.is_empty() || !ends_word {
                        return Err(Unparsable::new(format!("redirection \"{c}&{target}\"")));
                    }
                    splitter.word.clear();
                    splitter.in_word = false;
                } else if c == '<' && next == Some('<') {
                    return Err(Unparsable::new("here-document \"<<\""));
                } else if next == Some('(') {
                    return Err(Unparsable::new(format!("process substitution \"{c}(\"")));
                } else {
                    return Err(Unparsable::new(format!(
                        "redirection {c:?} (a file the policy cannot see)"
                    )));
                }
            }
            '#' if !splitter.in_word => {
                // A comment runs to the end of the line.
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '!' if history_expansion(chars.peek().copied()) => {
                return Err(Unparsable::new("history expansion \"!\""));
            }
            c => splitter.push_unquoted(c),
        }
    }
    splitter.end_command("")?;
    Ok(splitter.commands)
}

/// Whether `$` followed by `next` expands (a parameter, `${`, `$(`).
fn check_dollar(next: Option<char>) -> Result<(), Unparsable> {
    match next {
        Some('(') => Err(Unparsable::new("command substitution \"$(\"")),
        Some('{') => Err(Unparsable::new("parameter expansion \"${\"")),
        Some(c) if c.is_alphanumeric() || "_?#@*!$-".contains(c) => Err(Unparsable::new(format!(
            "parameter expansion \"${c}\" (its value is unknown)"
        ))),
        _ => Ok(()),
    }
}

/// Whether `!` followed by `next` is an interactive shell's history
/// expansion (`!!`, `!rm`, `!-1`).
fn history_expansion(next: Option<char>) -> bool {
    next.is_some_and(|c| !matches!(c, ' ' | '\t' | '\n' | '=' | '(' | '"'))
}

#[derive(Default)]
struct Splitter {
    commands: Vec<(Vec<Word>, &'static str)>,
    command: Vec<Word>,
    word: String,
    in_word: bool,
    /// The word so far had a quote or escape (so `2` in `"2">` is no
    /// descriptor).
    quoted: bool,
    globbing: bool,
    open_bracket: bool,
    open_brace: bool,
    /// An unquoted `{...}` closed in this word: bash's `r{m,}` is `rm r`.
    brace_expansion: bool,
}

impl Splitter {
    fn push_unquoted(&mut self, c: char) {
        match c {
            '*' | '?' => self.globbing = true,
            '[' => self.open_bracket = true,
            ']' if self.open_bracket => self.globbing = true,
            '{' => self.open_brace = true,
            _ => {}
        }
        if c == '}' && self.open_brace {
            self.brace_expansion = true;
        }
        self.in_word = true;
        self.word.push(c);
    }

    fn end_word(&mut self) -> Result<(), Unparsable> {
        if self.brace_expansion {
            return Err(Unparsable::new(format!(
                "brace expansion in {:?}",
                self.word
            )));
        }
        if self.in_word || !self.word.is_empty() {
            let text = std::mem::take(&mut self.word);
            self.command.push(Word {
                text,
                globbing: self.globbing,
            });
        }
        self.in_word = false;
        self.quoted = false;
        self.globbing = false;
        self.open_bracket = false;
        self.open_brace = false;
        Ok(())
    }

    fn end_command(&mut self, operator: &'static str) -> Result<(), Unparsable> {
        self.end_word()?;
        let mut words = std::mem::take(&mut self.command);
        let leading = words
            .iter()
            .take_while(|w| TRANSPARENT_RESERVED.contains(&w.text.as_str()))
            .count();
        words.drain(..leading);
        if let Some(first) = words.first()
            && OPAQUE_RESERVED.contains(&first.text.as_str())
        {
            return Err(Unparsable::new(format!(
                "compound command {:?}",
                first.text
            )));
        }
        if !words.is_empty() {
            self.commands.push((words, operator));
        } else if let Some((_, last)) = self.commands.last_mut()
            && !operator.is_empty()
        {
            *last = operator;
        }
        Ok(())
    }
}

/// A line that [`split_commands`] splits back into `words`, file name
/// patterns included (their other characters quoted).
pub fn quote_command(words: &[Word]) -> String {
    let mut line = String::new();
    for word in words {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push('\'');
        for c in word.text.chars() {
            match c {
                '\'' => line.push_str("'\\''"),
                '*' | '?' | '[' | ']' if word.globbing => {
                    line.push('\'');
                    line.push(c);
                    line.push('\'');
                }
                c => line.push(c),
            }
        }
        line.push('\'');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<Vec<String>> {
        split_commands(line)
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            .into_iter()
            .map(|c| c.into_iter().map(|w| w.text).collect())
            .collect()
    }

    #[test]
    fn quotes_and_escapes_are_removed() {
        assert_eq!(texts("r''m -rf /"), [["rm", "-rf", "/"]]);
        assert_eq!(texts("\\rm x"), [["rm", "x"]]);
        assert_eq!(
            texts("echo \"a b\" 'c\"d' e\\ f"),
            [["echo", "a b", "c\"d", "e f"]]
        );
        assert_eq!(texts("echo \"\\$x \\q\""), [["echo", "$x \\q"]]);
        assert_eq!(texts("echo '' x"), [["echo", "", "x"]]);
        assert_eq!(texts("echo a\\\nb"), [["echo", "ab"]]);
    }

    #[test]
    fn lists_and_pipelines_split() {
        assert_eq!(
            texts("ls; rm -rf / && id || true | wc -l & sleep 1\npwd |& cat"),
            vec![
                vec!["ls"],
                vec!["rm", "-rf", "/"],
                vec!["id"],
                vec!["true"],
                vec!["wc", "-l"],
                vec!["sleep", "1"],
                vec!["pwd"],
                vec!["cat"],
            ]
        );
        assert_eq!(
            texts("if rm x; then ! id; fi"),
            vec![vec!["rm", "x"], vec!["id"]]
        );
        assert_eq!(texts("ls 2>&1 # rm -rf /"), [["ls"]]);
        assert!(texts(" ; ").is_empty());
    }

    #[test]
    fn what_a_shell_would_expand_is_unparsable() {
        for (line, reason) in [
            ("$(echo rm) -rf /", "command substitution"),
            ("`echo rm`", "command substitution"),
            ("echo \"$(id)\"", "command substitution"),
            ("$RM -rf /", "parameter expansion \"$R"),
            ("echo ${HOME}", "parameter expansion \"${"),
            ("echo 'x", "unbalanced single quote"),
            ("echo \"x", "unbalanced double quote"),
            ("cat <<EOF", "here-document"),
            ("cat < /etc/shadow", "redirection '<'"),
            ("echo x > /etc/passwd", "redirection '>'"),
            ("diff <(ls) x", "process substitution"),
            ("(rm -rf /)", "subshell"),
            ("r{m,} x", "brace expansion in \"r{m,}\""),
            ("!!", "history expansion"),
            ("for f in *; do rm $f; done", "compound command \"for\""),
            ("echo $'\\x72m'", "quoting \"$'\""),
            ("echo x\\", "ends in a backslash"),
        ] {
            let err = split_commands(line).unwrap_err();
            assert!(err.reason.contains(reason), "{line:?}: {err}");
        }
    }

    #[test]
    fn quoted_commands_split_back() {
        for line in [
            "echo 'a b' c\\'d",
            "ls /srv/*.txt x[ab] '*'",
            "printf '\\n'",
        ] {
            for words in split_commands(line).unwrap() {
                let quoted = quote_command(&words);
                assert_eq!(split_commands(&quoted).unwrap(), [words], "{quoted}");
            }
        }
    }

    #[test]
    fn operators_are_kept() {
        let operators: Vec<&str> = split_list("a | b && c; d\n")
            .unwrap()
            .into_iter()
            .map(|(_, operator)| operator)
            .collect();
        assert_eq!(operators, ["|", "&&", ";", ";"]);
    }

    #[test]
    fn globs_are_marked() {
        let words = &split_commands("ls *.txt '*' [ab] x]").unwrap().remove(0);
        let globbing: Vec<bool> = words.iter().map(|w| w.globbing).collect();
        assert_eq!(globbing, [false, true, false, true, false]);
    }
}
