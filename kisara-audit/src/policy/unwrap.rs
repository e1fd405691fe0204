//! Unwrapping runners: `env X=1 nice -n 5 busybox rm -rf /` is `rm -rf /`
//! run through `env`, `nice` and `busybox`; `sh -c 'ls; rm x'` is a script
//! to split again.

use super::shell::{Unparsable, Word};

/// A simple command with its runners taken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unwrapped<'a> {
    /// The program and its arguments.
    Command {
        /// The runners taken off, outermost first (`env`, `nice`).
        runners: Vec<&'a str>,
        /// The program and its arguments.
        words: &'a [Word],
    },
    /// A shell's `-c` script, to split and judge command by command.
    Script {
        /// The runners taken off, the shell last.
        runners: Vec<&'a str>,
        /// The script.
        script: &'a str,
    },
}

/// The shells whose `-c` script is judged; any other program named like
/// one of these is one.
const SHELLS: &[&str] = &["sh", "ash", "bash", "dash", "zsh", "ksh", "mksh", "hush"];

/// Options of the shells that take a value (`-o errexit`).
const SHELL_VALUE_OPTIONS: &[&str] = &["-o", "+o", "-O", "+O", "--rcfile", "--init-file"];

/// Programs that run the program after their options (and, for `timeout`,
/// a duration), with the options of theirs that take a value.
const RUNNERS: &[(&str, &[&str], usize)] = &[
    ("env", &["-u", "--unset", "-C", "--chdir"], 0),
    ("nice", &["-n", "--adjustment"], 0),
    ("nohup", &[], 0),
    ("setsid", &[], 0),
    ("time", &["-f", "--format", "-o", "--output"], 0),
    ("timeout", &["-s", "--signal", "-k", "--kill-after"], 1),
    (
        "stdbuf",
        &["-i", "-o", "-e", "--input", "--output", "--error"],
        0,
    ),
    ("command", &[], 0),
    ("builtin", &[], 0),
    ("exec", &["-a"], 0),
];

/// Programs that run commands whose arguments come from somewhere the
/// policy cannot see, or that run shell code from a file or string.
const OPAQUE: &[(&str, &str)] = &[
    ("eval", "runs its arguments as shell code"),
    ("source", "runs a file as shell code"),
    (".", "runs a file as shell code"),
    ("xargs", "takes the arguments of its command from its input"),
];

/// The name `/bin/rm` and `rm` share.
pub(crate) fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// Whether `word` is a shell assignment (`NAME=value`).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Takes the runners off `words` (a simple command from a shell, or an
/// exec's argv). Leading assignments are skipped.
pub(crate) fn unwrap(words: &[Word]) -> Result<Unwrapped<'_>, Unparsable> {
    let mut runners = Vec::new();
    let mut at = words.iter().take_while(|w| is_assignment(&w.text)).count();
    loop {
        let Some(program) = words.get(at) else {
            // Only assignments (`X=1`): no program runs.
            return Ok(Unwrapped::Command {
                runners,
                words: &[],
            });
        };
        if program.globbing {
            return Err(Unparsable::new(format!(
                "file name pattern {:?} in program position",
                program.text
            )));
        }
        let name = basename(&program.text);
        if let Some((_, why)) = OPAQUE.iter().find(|(opaque, _)| *opaque == name) {
            return Err(Unparsable::new(format!("{name:?} {why}")));
        }
        let rest = &words[at + 1..];
        if name == "busybox" {
            if rest.first().is_some_and(|w| !w.text.starts_with('-')) {
                runners.push(name);
                at += 1;
                continue;
            }
            break;
        }
        if name == "find"
            && let Some(action) = rest
                .iter()
                .find(|w| matches!(w.text.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir"))
        {
            return Err(Unparsable::new(format!(
                "find {:?} runs a command on file names the policy cannot see",
                action.text
            )));
        }
        if SHELLS.contains(&name) {
            match shell_script(rest)? {
                Some(script) => {
                    runners.push(name);
                    return Ok(Unwrapped::Script { runners, script });
                }
                // A script file or an interactive shell: judged as itself.
                None => break,
            }
        }
        let Some(&(_, value_options, positionals)) =
            RUNNERS.iter().find(|(runner, _, _)| *runner == name)
        else {
            break;
        };
        if name == "env"
            && let Some(split) = rest.iter().find(|w| {
                w.text == "--split-string"
                    || w.text.starts_with("--split-string=")
                    || w.text.starts_with("-S")
            })
        {
            return Err(Unparsable::new(format!(
                "env {:?} splits a string into a command",
                split.text
            )));
        }
        let mut next = at + 1 + skip_options(rest, value_options);
        if name == "env" {
            next += words[next..]
                .iter()
                .take_while(|w| is_assignment(&w.text))
                .count();
        }
        next += positionals;
        if next >= words.len() {
            // `nohup`, `env -i`, `command -v`: nothing to run after them.
            break;
        }
        runners.push(name);
        at = next;
    }
    Ok(Unwrapped::Command {
        runners,
        words: &words[at..],
    })
}

/// How many leading words of `args` are options (with their values).
fn skip_options(args: &[Word], value_options: &[&str]) -> usize {
    let mut at = 0;
    while let Some(word) = args.get(at) {
        let text = word.text.as_str();
        if text == "--" {
            return at + 1;
        }
        // A lone `-` is an option too (`env -` empties the environment):
        // taking it for the program would let the real one pass unjudged.
        if !text.starts_with('-') {
            return at;
        }
        // A value option given apart (`-n 5`) takes the next word; joined
        // (`-n5`, `--signal=KILL`) or a flag, only its own.
        at += if value_options.contains(&text) { 2 } else { 1 };
    }
    at.min(args.len())
}

/// The `-c` script of a shell's arguments, if it has one.
fn shell_script(args: &[Word]) -> Result<Option<&str>, Unparsable> {
    let mut at = 0;
    let mut command_string = false;
    while let Some(word) = args.get(at) {
        let text = word.text.as_str();
        if text == "--" {
            at += 1;
            break;
        }
        if !(text.starts_with('-') || text.starts_with('+')) || text.len() < 2 {
            break;
        }
        if SHELL_VALUE_OPTIONS.contains(&text) {
            at += 2;
            continue;
        }
        if !text.starts_with("--") && text[1..].contains('c') {
            command_string = true;
        }
        at += 1;
    }
    if !command_string {
        return Ok(None);
    }
    match args.get(at) {
        Some(script) => Ok(Some(&script.text)),
        None => Err(Unparsable::new("a shell's \"-c\" without a script")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<Word> {
        line.split(' ').map(Word::literal).collect()
    }

    fn program(line: &str) -> (Vec<String>, Vec<String>) {
        let words = words(line);
        match unwrap(&words).unwrap() {
            Unwrapped::Command { runners, words } => (
                runners.into_iter().map(str::to_owned).collect(),
                words.iter().map(|w| w.text.clone()).collect(),
            ),
            Unwrapped::Script { script, .. } => panic!("{line}: a script {script:?}"),
        }
    }

    #[test]
    fn runners_come_off() {
        for (line, runners, command) in [
            ("env X=1 rm -rf /", &["env"][..], "rm -rf /"),
            ("X=1 Y=2 rm x", &[], "rm x"),
            ("env -i -u HOME X=1 /bin/rm x", &["env"], "/bin/rm x"),
            ("busybox rm x", &["busybox"], "rm x"),
            (
                "nice -n 5 nohup timeout -s KILL 5 stdbuf -oL rm x",
                &["nice", "nohup", "timeout", "stdbuf"],
                "rm x",
            ),
            ("timeout 5s rm", &["timeout"], "rm"),
            ("command -p exec -a x rm y", &["command", "exec"], "rm y"),
            ("nohup", &[], "nohup"),
            ("env", &[], "env"),
            ("env -i", &[], "env -i"),
            ("busybox --list", &[], "busybox --list"),
            ("sh script.sh", &[], "sh script.sh"),
            ("bash", &[], "bash"),
        ] {
            let (got_runners, got_command) = program(line);
            assert_eq!(got_runners, runners, "{line}");
            assert_eq!(got_command.join(" "), command, "{line}");
        }
    }

    #[test]
    fn shells_give_their_scripts() {
        let argv = ["busybox", "sh", "-ec", "ls; rm x", "zero"].map(Word::literal);
        assert_eq!(
            unwrap(&argv).unwrap(),
            Unwrapped::Script {
                runners: vec!["busybox", "sh"],
                script: "ls; rm x"
            }
        );
        let argv = ["bash", "-o", "errexit", "-c", "id"].map(Word::literal);
        assert!(matches!(
            unwrap(&argv).unwrap(),
            Unwrapped::Script { script: "id", .. }
        ));
        let err = unwrap(&words("sh -c")).unwrap_err();
        assert!(err.reason.contains("without a script"), "{err}");
    }

    #[test]
    fn opaque_runners_are_unparsable() {
        for (line, reason) in [
            ("eval rm x", "\"eval\""),
            (". ./x", "\".\""),
            ("xargs rm", "\"xargs\""),
            ("find / -exec rm {} ;", "\"-exec\""),
            ("env -S rm", "\"-S\""),
        ] {
            let err = unwrap(&words(line)).unwrap_err();
            assert!(err.reason.contains(reason), "{line}: {err}");
        }
    }
}
