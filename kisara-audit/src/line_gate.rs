//! [`LineGate`]: rebuilds the line a user types from the raw terminal input
//! and holds its Enter until a policy decided on it.
//!
//! The gate is pure and synchronous: the session engine feeds it the bytes
//! the user's terminal sends and carries out the [`GateAction`]s it returns,
//! in order. [`judge_line`] is the async step between a
//! [`GateAction::Decide`] and [`LineGate::allow`] / [`LineGate::deny`].

pub use kisara_core::{CompletedLine, GateAction, UncertainMode};
use std::sync::Arc;

use async_trait::async_trait;
use kisara_core::{
    AuditEventKind, CommandContext, CommandPolicy, InputGate, PolicyDecision, TerminalPolicy,
};

use crate::policy::shell::{Word, quote_command, split_list};

/// Ctrl-C: what a denied line is cleared with. It discards the whole line
/// wherever the cursor is, in line editors (readline, busybox) and in the
/// kernel's cooked mode alike, and the shell prints a fresh prompt; Ctrl-U
/// would only erase what is left of the cursor.
pub const CLEAR_LINE: &[u8] = b"\x03";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Started,
    /// In a CSI sequence (`ESC [`), with its parameters so far.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

/// The longest CSI parameter string kept; longer ones are only skipped.
const MAX_CSI_PARAMS: usize = 16;

/// Rebuilds typed lines from terminal input; see the module docs.
#[derive(Debug, Clone)]
pub struct LineGate {
    mode: UncertainMode,
    line: String,
    uncertain: Option<&'static str>,
    /// A UTF-8 sequence split across reads.
    utf8: Vec<u8>,
    escape: Escape,
    csi: Vec<u8>,
    paste: bool,
    /// The Enter (CR, LF or Ctrl-D) awaiting a decision.
    held: Option<u8>,
    /// Input fed while a decision is pending.
    backlog: Vec<u8>,
}

impl LineGate {
    /// A gate at an empty line.
    pub fn new(mode: UncertainMode) -> Self {
        Self {
            mode,
            line: String::new(),
            uncertain: None,
            utf8: Vec::new(),
            escape: Escape::None,
            csi: Vec::new(),
            paste: false,
            held: None,
            backlog: Vec::new(),
        }
    }

    /// The line typed so far.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Whether a decision is pending.
    pub fn is_deciding(&self) -> bool {
        self.held.is_some()
    }

    /// Takes input from the user's terminal.
    pub fn feed(&mut self, input: &[u8]) -> Vec<GateAction> {
        let mut actions = Vec::new();
        if self.held.is_some() {
            self.backlog.extend_from_slice(input);
        } else {
            self.process(input, &mut actions);
        }
        actions
    }

    /// The pending line may run: its Enter goes out, then whatever was fed
    /// meanwhile. Nothing when no decision is pending.
    pub fn allow(&mut self) -> Vec<GateAction> {
        let Some(enter) = self.held.take() else {
            return Vec::new();
        };
        if enter == CTRL_D {
            // The line goes on: readline deletes nothing at its end, cooked
            // mode hands the text over without running it, and after that
            // erasing it no longer reaches the shell.
            self.uncertain.get_or_insert("Ctrl-D on a non-empty line");
        } else {
            self.reset_line();
        }
        self.resume(vec![GateAction::Forward(vec![enter])])
    }

    /// The pending line must not run: the container gets [`CLEAR_LINE`]
    /// instead of its Enter and the user a message naming `reason`; then
    /// whatever was fed meanwhile is processed. Nothing when no decision is
    /// pending.
    pub fn deny(&mut self, reason: &str) -> Vec<GateAction> {
        if self.held.take().is_none() {
            return Vec::new();
        }
        self.reset_line();
        let message = format!("\r\nkisara: denied: {reason}\r\n").into_bytes();
        self.resume(vec![
            GateAction::Forward(CLEAR_LINE.to_vec()),
            GateAction::Show(message),
        ])
    }

    fn resume(&mut self, mut actions: Vec<GateAction>) -> Vec<GateAction> {
        let backlog = std::mem::take(&mut self.backlog);
        self.process(&backlog, &mut actions);
        // Adjacent forwards go out as one write.
        let mut merged: Vec<GateAction> = Vec::with_capacity(actions.len());
        for action in actions {
            match (merged.last_mut(), action) {
                (Some(GateAction::Forward(last)), GateAction::Forward(more)) => {
                    last.extend_from_slice(&more);
                }
                (_, action) => merged.push(action),
            }
        }
        merged
    }

    fn reset_line(&mut self) {
        self.line.clear();
        self.uncertain = None;
        self.utf8.clear();
    }

    fn unsure(&mut self, cause: &'static str) {
        self.uncertain.get_or_insert(cause);
    }

    fn process(&mut self, input: &[u8], actions: &mut Vec<GateAction>) {
        for (at, &byte) in input.iter().enumerate() {
            if self.take(byte) {
                if at > 0 {
                    actions.push(GateAction::Forward(input[..at].to_vec()));
                }
                self.held = Some(byte);
                actions.push(GateAction::Decide(CompletedLine {
                    line: self.line.clone(),
                    uncertain: self.uncertain,
                    mode: self.mode,
                }));
                self.backlog.extend_from_slice(&input[at + 1..]);
                return;
            }
        }
        if !input.is_empty() {
            actions.push(GateAction::Forward(input.to_vec()));
        }
    }

    /// Takes one byte; true when it is an Enter to hold.
    fn take(&mut self, byte: u8) -> bool {
        match self.escape {
            Escape::None => {}
            Escape::Started => {
                self.escape = match byte {
                    b'[' => {
                        self.csi.clear();
                        Escape::Csi
                    }
                    b'O' => Escape::Ss3,
                    // Alt+key: word motion, yanking the last argument, ...
                    _ => {
                        self.unsure("an Alt key or escape sequence");
                        if byte == ESC {
                            Escape::Started
                        } else {
                            Escape::None
                        }
                    }
                };
                return false;
            }
            Escape::Csi => {
                match byte {
                    0x20..=0x3f => {
                        if self.csi.len() < MAX_CSI_PARAMS {
                            self.csi.push(byte);
                        }
                    }
                    0x40..=0x7e => {
                        self.escape = Escape::None;
                        self.csi_sequence(byte);
                    }
                    _ => {
                        // A broken sequence: the terminal sent something odd.
                        self.escape = Escape::None;
                        self.unsure("a broken escape sequence");
                    }
                }
                return false;
            }
            Escape::Ss3 => {
                self.escape = Escape::None;
                self.unsure(match byte {
                    b'A' | b'B' => "history recall",
                    _ => "cursor movement",
                });
                return false;
            }
        }
        if byte >= 0x80 || (0x20..0x7f).contains(&byte) {
            self.text_byte(byte);
            return false;
        }
        self.flush_utf8();
        match byte {
            b'\r' | b'\n' => {
                // An empty line runs nothing: no need to ask.
                !(self.line.is_empty() && self.uncertain.is_none())
            }
            ESC => {
                self.escape = Escape::Started;
                false
            }
            b'\t' if self.paste => {
                self.line.push('\t');
                false
            }
            _ if self.paste => {
                self.unsure("a control character in a paste");
                false
            }
            0x08 | 0x7f => {
                self.line.pop();
                false
            }
            // Ctrl-U erases what is left of the cursor.
            0x15 => {
                self.line.clear();
                false
            }
            // Ctrl-W erases the word left of the cursor; words end at
            // spaces and tabs, as for the shell.
            0x17 => {
                let kept = self.line.trim_end_matches([' ', '\t']).len();
                self.line.truncate(kept);
                let start = self.line.rfind([' ', '\t']).map_or(0, |at| at + 1);
                self.line.truncate(start);
                false
            }
            // Ctrl-C discards the whole line, wherever the cursor is.
            0x03 => {
                self.reset_line();
                false
            }
            // Ctrl-D on an empty line is end of file; on a non-empty one
            // cooked mode hands the text to the shell, which runs it at the
            // next end of file: judged like an Enter.
            CTRL_D => !(self.line.is_empty() && self.uncertain.is_none()),
            b'\t' => {
                self.unsure("tab completion");
                false
            }
            0x12 => {
                self.unsure("history search (Ctrl-R)");
                false
            }
            // Ctrl-L redraws, Ctrl-G rings: the line stays.
            0x0c | 0x07 => false,
            _ => {
                self.unsure("an editing key (Ctrl-A, Ctrl-E, Ctrl-K, ...)");
                false
            }
        }
    }

    fn csi_sequence(&mut self, last: u8) {
        match (self.csi.as_slice(), last) {
            (b"200", b'~') => self.paste = true,
            (b"201", b'~') => self.paste = false,
            // Focus reports change nothing.
            (b"", b'I' | b'O') => {}
            // The terminal's replies to the shell's queries (busybox asks
            // for the cursor position at each prompt) are no keys, but
            // busybox drops the keys that reach it in the same read as a
            // reply, which the gate cannot see.
            (_, b'R' | b'n') | ([b'?' | b'>', ..], b'c') => {
                self.unsure("a terminal reply (the shell may drop keys sent with it)");
            }
            (_, b'A' | b'B') => self.unsure("history recall"),
            _ => self.unsure("cursor movement"),
        }
    }

    fn text_byte(&mut self, byte: u8) {
        if byte < 0x80 {
            self.flush_utf8();
            self.line.push(char::from(byte));
            return;
        }
        if byte & 0xc0 == 0x80 && self.utf8.is_empty() {
            // A continuation byte without a start.
            self.line.push(char::REPLACEMENT_CHARACTER);
            return;
        }
        if byte & 0xc0 != 0x80 {
            self.flush_utf8();
        }
        self.utf8.push(byte);
        let expected = match self.utf8[0] {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 1,
        };
        if self.utf8.len() >= expected {
            match std::str::from_utf8(&self.utf8) {
                Ok(text) => self.line.push_str(text),
                Err(_) => self.line.push(char::REPLACEMENT_CHARACTER),
            }
            self.utf8.clear();
        }
    }

    /// An unfinished UTF-8 sequence cut short by another byte.
    fn flush_utf8(&mut self) {
        if !self.utf8.is_empty() {
            self.utf8.clear();
            self.line.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

const ESC: u8 = 0x1b;
const CTRL_D: u8 = 0x04;

/// Judges a completed line with any [`CommandPolicy`] and gives the audit
/// event to record.
///
/// An uncertain line in [`UncertainMode::Deny`] is denied without asking.
/// Otherwise each simple command of the line goes to the policy as its
/// words, all must be allowed; a command with file name patterns goes as
/// `sh -c <the command>` so a policy that parses shell input sees the
/// patterns unquoted. A line the splitter cannot parse goes as `sh -c
/// <line>`, for the policy's own rule on unparsable input. The event's
/// `command` is the line's words with the operators between commands (`|`,
/// `&&`, ...), or that `sh -c` argv.
pub async fn judge_line(
    policy: &dyn CommandPolicy,
    context: &CommandContext,
    line: &CompletedLine,
) -> kisara_core::Result<(PolicyDecision, AuditEventKind)> {
    let uncertain = line.uncertain.is_some();
    let shell = |script: String| vec!["sh".to_owned(), "-c".to_owned(), script];
    let (command, decision) = match (line.uncertain, line.mode, split_list(&line.line)) {
        (Some(cause), UncertainMode::Deny, parsed) => {
            let words = match parsed {
                Ok(list) => audit_words(&list),
                Err(_) => shell(line.line.clone()),
            };
            let reason = format!(
                "the line could not be followed exactly ({cause}); such lines are denied, type it again without editing keys"
            );
            (words, PolicyDecision::Deny { reason })
        }
        (_, _, Ok(list)) => {
            let mut decision = PolicyDecision::Allow;
            for (words, _) in &list {
                let argv: Vec<String> = if words.iter().any(|w| w.globbing) {
                    shell(quote_command(words))
                } else {
                    words.iter().map(|w| w.text.clone()).collect()
                };
                decision = policy.check(context, &argv).await?;
                if !decision.is_allowed() {
                    break;
                }
            }
            (audit_words(&list), decision)
        }
        (_, _, Err(_)) => {
            let argv = shell(line.line.clone());
            let decision = policy.check(context, &argv).await?;
            (argv, decision)
        }
    };
    let event = AuditEventKind::Command {
        command,
        decision: decision.clone(),
        uncertain,
    };
    Ok((decision, event))
}

impl InputGate for LineGate {
    fn feed(&mut self, input: &[u8]) -> Vec<GateAction> {
        LineGate::feed(self, input)
    }

    fn allow(&mut self) -> Vec<GateAction> {
        LineGate::allow(self)
    }

    fn deny(&mut self, reason: &str) -> Vec<GateAction> {
        LineGate::deny(self, reason)
    }
}

/// The [`TerminalPolicy`] made of a [`LineGate`] per terminal and any
/// [`CommandPolicy`] judging each line through [`judge_line`]: what the
/// session engine is given to check terminals with the same rules as
/// one-shot execs.
#[derive(Debug, Clone)]
pub struct LineGatePolicy {
    policy: Arc<dyn CommandPolicy>,
    mode: UncertainMode,
}

impl LineGatePolicy {
    /// Lines judged by `policy`; lines the gate cannot follow handled as
    /// `mode` says.
    pub fn new(policy: Arc<dyn CommandPolicy>, mode: UncertainMode) -> Self {
        Self { policy, mode }
    }
}

#[async_trait]
impl TerminalPolicy for LineGatePolicy {
    fn gate(&self) -> Box<dyn InputGate> {
        Box::new(LineGate::new(self.mode))
    }

    async fn judge(
        &self,
        context: &CommandContext,
        line: &CompletedLine,
    ) -> kisara_core::Result<(PolicyDecision, AuditEventKind)> {
        judge_line(&*self.policy, context, line).await
    }
}

fn audit_words(list: &[(Vec<Word>, &'static str)]) -> Vec<String> {
    let mut words = Vec::new();
    for (command, operator) in list {
        words.extend(command.iter().map(|w| w.text.clone()));
        if !operator.is_empty() {
            words.push((*operator).to_owned());
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_after_a_held_enter_wait_for_the_decision() {
        let mut gate = LineGate::new(UncertainMode::Audit);
        let actions = gate.feed(b"ls\rid\r");
        assert_eq!(
            actions,
            [
                GateAction::Forward(b"ls".to_vec()),
                GateAction::Decide(CompletedLine {
                    line: "ls".into(),
                    uncertain: None,
                    mode: UncertainMode::Audit
                })
            ]
        );
        assert!(gate.feed(b"x").is_empty());
        let actions = gate.allow();
        assert_eq!(actions[0], GateAction::Forward(b"\rid".to_vec()));
        assert!(matches!(&actions[1], GateAction::Decide(l) if l.line == "id"));
        let actions = gate.deny("rule #1");
        assert_eq!(actions[0], GateAction::Forward(b"\x03".to_vec()));
        assert!(matches!(&actions[1], GateAction::Show(m) if m.ends_with(b"denied: rule #1\r\n")));
        assert_eq!(actions[2], GateAction::Forward(b"x".to_vec()));
        assert_eq!(gate.line(), "x");
        assert!(gate.allow().is_empty(), "nothing pending");
    }
}
