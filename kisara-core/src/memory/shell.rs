//! The tiny scripted shell that runs "processes" in [`super::MemoryRuntime`]
//! containers: enough of `sh` for tests to see exit codes, separate stdout
//! and stderr, stdin, terminal sizes and copied files.
//!
//! Understood: `echo [-n]`, `cat [FILE...]`, `stty size`, `read [VAR]`,
//! `sleep SECONDS`, `true`, `false`, `exit [N]`, `sh` (interactive, reading
//! lines from stdin) and `sh -c SCRIPT`; commands separated by `;` or new
//! lines; single and double quotes; a trailing `>&2` (or `1>&2`) sends a
//! command's output to stderr. Anything else prints `sh: NAME: not found`
//! and exits 127, as `sh` does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

use crate::Result;
use crate::model::{ExecOutput, TtySize};
use crate::sync::lock;

/// The interrupt character of a terminal.
const CTRL_C: u8 = 0x03;

/// A container's file system: files by absolute path, and directories.
#[derive(Debug, Default)]
pub(crate) struct FakeFs {
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    pub(crate) dirs: BTreeSet<String>,
}

impl FakeFs {
    pub(crate) fn new(hostname: &str) -> Self {
        let mut fs = Self::default();
        for dir in ["/", "/bin", "/etc", "/tmp"] {
            fs.dirs.insert(dir.to_owned());
        }
        fs.files.insert(
            "/etc/hostname".to_owned(),
            format!("{hostname}\n").into_bytes(),
        );
        fs
    }
}

/// Where a command's output goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The process's connections to the world.
pub(crate) struct ShellIo {
    pub(crate) stdin: Box<dyn AsyncBufRead + Send + Sync + Unpin>,
    pub(crate) output: mpsc::Sender<Result<ExecOutput>>,
    /// The terminal size, when the process has a terminal.
    pub(crate) tty: Option<watch::Receiver<TtySize>>,
    pub(crate) fs: Arc<Mutex<FakeFs>>,
    pub(crate) vars: BTreeMap<String, String>,
}

/// What a script line ended with.
enum Flow {
    Continue(i64),
    Exit(i64),
}

impl ShellIo {
    async fn write(&self, stream: Stream, bytes: impl Into<Bytes>) {
        // With a terminal, stdout and stderr are one stream, as on a real TTY.
        let chunk = match (stream, self.tty.is_some()) {
            (Stream::Stderr, false) => ExecOutput::Stderr(bytes.into()),
            _ => ExecOutput::Stdout(bytes.into()),
        };
        // A closed receiver means the session was dropped; the caller's
        // select on `closed()` ends the process.
        let _ = self.output.send(Ok(chunk)).await;
    }

    /// One line of input. With a terminal a carriage return ends a line
    /// too, as the kernel's `icrnl` makes Enter do on a real TTY, and
    /// Ctrl-C discards the line typed so far, as its `isig` does.
    async fn read_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            match self.stdin.read(&mut byte).await {
                Ok(0) | Err(_) if line.is_empty() => return None,
                Ok(0) | Err(_) => break,
                Ok(_) if byte[0] == b'\n' || (byte[0] == b'\r' && self.tty.is_some()) => break,
                Ok(_) if byte[0] == CTRL_C && self.tty.is_some() => line.clear(),
                Ok(_) => line.push(byte[0]),
            }
        }
        let line = String::from_utf8_lossy(&line);
        Some(line.trim_end_matches('\r').to_owned())
    }
}

/// Runs `command` (program and arguments) and returns its exit code.
pub(crate) async fn run(command: &[String], io: &mut ShellIo) -> i64 {
    match run_words(command, io, Stream::Stdout).await {
        Flow::Continue(code) | Flow::Exit(code) => code,
    }
}

/// Splits a script into commands, each a list of words, honouring quotes.
fn parse_script(script: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in script.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ';' | '\n') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

async fn run_script(script: &str, io: &mut ShellIo) -> Flow {
    let mut last = 0;
    for command in parse_script(script) {
        match Box::pin(run_line(command, io)).await {
            Flow::Continue(code) => last = code,
            exit @ Flow::Exit(_) => return exit,
        }
    }
    Flow::Continue(last)
}

async fn run_line(mut words: Vec<String>, io: &mut ShellIo) -> Flow {
    let stream = match words.last().map(String::as_str) {
        Some(">&2" | "1>&2") => {
            words.pop();
            Stream::Stderr
        }
        _ => Stream::Stdout,
    };
    for word in &mut words {
        if let Some(name) = word.strip_prefix('$') {
            *word = io.vars.get(name).cloned().unwrap_or_default();
        }
    }
    run_words(&words, io, stream).await
}

async fn run_words(words: &[String], io: &mut ShellIo, stream: Stream) -> Flow {
    let Some((program, args)) = words.split_first() else {
        return Flow::Continue(0);
    };
    let name = program.rsplit('/').next().unwrap_or(program);
    let code = match name {
        "true" => 0,
        "false" => 1,
        "exit" => return Flow::Exit(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
        "echo" => {
            let (newline, args) = match args.first().map(String::as_str) {
                Some("-n") => (false, &args[1..]),
                _ => (true, args),
            };
            let mut text = args.join(" ");
            if newline {
                text.push('\n');
            }
            io.write(stream, text).await;
            0
        }
        "cat" => cat(args, io, stream).await,
        "stty" => match (&io.tty, args.first().map(String::as_str)) {
            (Some(size), Some("size")) => {
                let size = *size.borrow();
                io.write(stream, format!("{} {}\n", size.rows, size.cols))
                    .await;
                0
            }
            (None, _) => {
                io.write(Stream::Stderr, "stty: standard input: Not a tty\n")
                    .await;
                1
            }
            (Some(_), _) => {
                io.write(Stream::Stderr, "stty: only 'stty size' is known here\n")
                    .await;
                1
            }
        },
        "read" => match io.read_line().await {
            Some(line) => {
                if let Some(var) = args.first() {
                    io.vars.insert(var.clone(), line);
                }
                0
            }
            None => 1,
        },
        "sleep" => match args.first().and_then(|a| a.parse::<f64>().ok()) {
            Some(secs) if secs >= 0.0 => {
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                0
            }
            _ => {
                io.write(
                    Stream::Stderr,
                    format!("sleep: invalid number {:?}\n", args.first()),
                )
                .await;
                1
            }
        },
        "sh" => match args.first().map(String::as_str) {
            Some("-c") => match run_script(args.get(1).map_or("", String::as_str), io).await {
                Flow::Continue(code) | Flow::Exit(code) => code,
            },
            _ => interactive(io).await,
        },
        other => {
            io.write(Stream::Stderr, format!("sh: {other}: not found\n"))
                .await;
            127
        }
    };
    Flow::Continue(code)
}

async fn cat(args: &[String], io: &mut ShellIo, stream: Stream) -> i64 {
    if args.is_empty() {
        let mut buffer = vec![0u8; 8192];
        loop {
            match io.stdin.read(&mut buffer).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => io.write(stream, Bytes::copy_from_slice(&buffer[..n])).await,
            }
        }
    }
    let mut code = 0;
    for path in args {
        let content = lock(&io.fs).files.get(path).cloned();
        match content {
            Some(content) => io.write(stream, content).await,
            None => {
                io.write(
                    Stream::Stderr,
                    format!("cat: can't open '{path}': No such file or directory\n"),
                )
                .await;
                code = 1;
            }
        }
    }
    code
}

async fn interactive(io: &mut ShellIo) -> i64 {
    let mut last = 0;
    while let Some(line) = io.read_line().await {
        match Box::pin(run_script(&line, io)).await {
            Flow::Continue(code) => last = code,
            Flow::Exit(code) => return code,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_split_on_separators_outside_quotes() {
        let commands = parse_script("echo 'a; b' \"c d\"; exit 3\nfalse");
        assert_eq!(
            commands,
            vec![
                vec!["echo".to_owned(), "a; b".to_owned(), "c d".to_owned()],
                vec!["exit".to_owned(), "3".to_owned()],
                vec!["false".to_owned()],
            ]
        );
        assert_eq!(
            parse_script("echo ''"),
            vec![vec!["echo".to_owned(), String::new()]]
        );
    }
}
