//! Patterns of policy rules: exact words, globs and regular expressions, and
//! the lexical path normalisation that path globs match against.

use regex::Regex;

/// One pattern as written in a rule: `re:<regex>` is a regular expression
/// that must match the whole word, anything else a glob (`*` within one path
/// component, `**` across `/`, `?`, `[a-z]`, `[!a-z]`, `\` escapes); a glob
/// without those is an exact word. A glob that starts with `/` is a path
/// glob: the word is normalised lexically (`//`, `.` and `..` resolved)
/// before it is matched, so `/srv/challenge/../../etc/passwd` is
/// `/etc/passwd`.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    source: String,
    matcher: Matcher,
    /// Match against the lexically normalised word.
    path: bool,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Regex(Regex),
}

impl Pattern {
    /// Compiles `source`, or says what is wrong with it.
    pub(crate) fn parse(source: &str) -> Result<Self, String> {
        let (matcher, path) = if let Some(regex) = source.strip_prefix("re:") {
            let anchored = format!("^(?:{regex})$");
            let regex = Regex::new(&anchored).map_err(|e| format!("bad regex {regex:?}: {e}"))?;
            (Matcher::Regex(regex), false)
        } else {
            let path = source.starts_with('/');
            let matcher = match glob_to_regex(source)? {
                Some(regex) => Matcher::Regex(
                    Regex::new(&regex).map_err(|e| format!("bad glob {source:?}: {e}"))?,
                ),
                None => Matcher::Exact(unescape(source)),
            };
            (matcher, path)
        };
        Ok(Self {
            source: source.to_owned(),
            matcher,
            path,
        })
    }

    /// The pattern as written.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// The exact word this pattern stands for, when it is no glob or regex.
    pub(crate) fn exact(&self) -> Option<&str> {
        match &self.matcher {
            Matcher::Exact(word) => Some(word),
            Matcher::Regex(_) => None,
        }
    }

    /// Whether `word` matches.
    pub(crate) fn matches(&self, word: &str) -> bool {
        if self.path && word.starts_with('/') {
            self.matches_raw(&normalize_path(word))
        } else {
            self.matches_raw(word)
        }
    }

    fn matches_raw(&self, word: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(exact) => exact == word,
            Matcher::Regex(regex) => regex.is_match(word),
        }
    }
}

/// Resolves `//`, `.` and `..` in an absolute path without looking at the
/// file system (`..` at the root stays at the root, as the kernel does). A
/// trailing slash is dropped. Symbolic links are not followed: a policy
/// cannot know them.
pub(crate) fn normalize_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for part in &parts {
        normal.push('/');
        normal.push_str(part);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    normal
}

/// The anchored regex of a glob, or `None` when the glob is an exact word.
fn glob_to_regex(glob: &str) -> Result<Option<String>, String> {
    let mut regex = String::from("^");
    let mut wild = false;
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                wild = true;
                regex.push_str(".*");
            }
            '*' => {
                wild = true;
                regex.push_str("[^/]*");
            }
            '?' => {
                wild = true;
                regex.push_str("[^/]");
            }
            '[' => {
                wild = true;
                regex.push('[');
                if matches!(chars.peek(), Some('!' | '^')) {
                    chars.next();
                    regex.push('^');
                }
                let mut closed = false;
                let mut first = true;
                while let Some(c) = chars.next() {
                    match c {
                        // A `]` first in the class is a member, as in shells.
                        ']' if !first => {
                            closed = true;
                            break;
                        }
                        '\\' => {
                            let escaped = chars
                                .next()
                                .ok_or_else(|| format!("glob {glob:?} ends in a `\\`"))?;
                            push_class_char(&mut regex, escaped);
                        }
                        '-' if !first && chars.peek() != Some(&']') => regex.push('-'),
                        c => push_class_char(&mut regex, c),
                    }
                    first = false;
                }
                if !closed {
                    return Err(format!("unclosed `[` in glob {glob:?}"));
                }
                regex.push(']');
            }
            '\\' => {
                let escaped = chars
                    .next()
                    .ok_or_else(|| format!("glob {glob:?} ends in a `\\`"))?;
                regex.push_str(&regex::escape(&escaped.to_string()));
            }
            c => regex.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    regex.push('$');
    Ok(wild.then_some(regex))
}

fn push_class_char(regex: &mut String, c: char) {
    if matches!(c, '\\' | '[' | ']' | '^' | '-' | '&' | '~') {
        regex.push('\\');
    }
    regex.push(c);
}

/// An exact glob with its `\` escapes removed.
fn unescape(glob: &str) -> String {
    let mut word = String::with_capacity(glob.len());
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        word.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_lexically() {
        for (path, normal) in [
            ("/", "/"),
            ("//srv///challenge/", "/srv/challenge"),
            ("/srv/challenge/../../etc/passwd", "/etc/passwd"),
            ("/../../x", "/x"),
            ("/srv/./a/.", "/srv/a"),
        ] {
            assert_eq!(normalize_path(path), normal, "{path}");
        }
    }

    #[test]
    fn globs_match_like_shell_globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("rm", "rm", true),
            ("rm", "rmx", false),
            ("python*", "python3", true),
            ("python*", "python3/x", false),
            ("/srv/challenge/**", "/srv/challenge/a/b", true),
            (
                "/srv/challenge/**",
                "/srv/challenge/../../etc/passwd",
                false,
            ),
            ("/srv/challenge/*", "/srv/challenge/./flag", true),
            ("-[rR]", "-R", true),
            ("-[!rR]", "-R", false),
            ("[]]", "]", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("?", "/", false),
            ("re:-[a-z]*r[a-z]*", "-rf", true),
            ("re:-[a-z]*r[a-z]*", "x-rf", false),
        ];
        for &(pattern, word, expected) in cases {
            let compiled = Pattern::parse(pattern).unwrap();
            assert_eq!(compiled.matches(word), expected, "{pattern} ~ {word}");
        }
    }

    #[test]
    fn bad_patterns_name_themselves() {
        let err = Pattern::parse("[abc").unwrap_err();
        assert!(err.contains("[abc"), "{err}");
        let err = Pattern::parse("re:(").unwrap_err();
        assert!(err.contains("bad regex \"(\""), "{err}");
    }
}
