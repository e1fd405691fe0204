//! `CastStore` files against the real `asciinema` 2.x CLI (Debian's
//! package): `asciinema cat` plays what the store wrote, and what
//! `asciinema rec` wrote reads back through `CastReader`.
//!
//! asciinema opens `/dev/tty`, so each command runs under a pseudo-terminal
//! from util-linux `script`, switched to raw mode (`stty raw -echo`) so that
//! the terminal passes the bytes through unchanged.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use kisara_audit::{CastReader, CastReaderOptions, CastStore, CastStoreOptions};
use kisara_core::model::{ContainerId, SessionId, TtySize};
use kisara_core::{EventData, RecordingEvent, RecordingRequest, RecordingStore};

/// Fails the test, saying how to install what is missing.
fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "`{program}` is not installed; these tests need it: apt-get install -y {package} \
         (or run ./scripts/ensure-docker as root, which installs the test peers)"
    );
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Runs `command` under a raw pseudo-terminal and returns what it printed.
fn under_pty(command: &str) -> Vec<u8> {
    require("script", "util-linux");
    require("asciinema", "asciinema");
    let output = Command::new("timeout")
        .args(["60", "script", "-qec"])
        .arg(format!("stty raw -echo; {command}"))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{command} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn request() -> RecordingRequest {
    RecordingRequest {
        session: SessionId::new("asciinema-session"),
        container: ContainerId::new("web"),
        username: "alice".to_owned(),
        size: TtySize { rows: 24, cols: 80 },
        title: Some("kisara → asciinema".to_owned()),
        env: BTreeMap::from([
            ("SHELL".to_owned(), "/bin/sh".to_owned()),
            ("TERM".to_owned(), "xterm-256color".to_owned()),
        ]),
    }
}

#[tokio::test]
async fn asciinema_cat_plays_the_stores_output_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = CastStore::open(dir.path(), CastStoreOptions::default()).unwrap();
    let mut writer = store.create(request()).await.unwrap();
    let text = "$ ls --color\r\n\u{1b}[1;34mbin\u{1b}[0m  Größe  日本語  😀\r\n\"q\" \\ \t\x07\r\n"
        .repeat(50);
    let bytes = text.as_bytes();
    // Cut at every 7th byte, so characters are split between events.
    let mut time = Duration::ZERO;
    for chunk in bytes.chunks(7) {
        time += Duration::from_micros(137);
        let data = EventData::Output(Bytes::copy_from_slice(chunk));
        writer.append(RecordingEvent { time, data }).await.unwrap();
        if chunk.contains(&b'$') {
            let marker = EventData::Marker("command: ls --color".to_owned());
            writer
                .append(RecordingEvent { time, data: marker })
                .await
                .unwrap();
            let typed = EventData::Input(Bytes::from_static(b"ls --color\r"));
            writer
                .append(RecordingEvent { time, data: typed })
                .await
                .unwrap();
        }
    }
    let resize = EventData::Resize(TtySize {
        rows: 50,
        cols: 132,
    });
    writer
        .append(RecordingEvent { time, data: resize })
        .await
        .unwrap();
    writer.finish("exit").await.unwrap();

    let played = under_pty(&format!(
        "asciinema cat {}",
        quoted(&store.cast_path(writer.id()))
    ));
    assert_eq!(String::from_utf8_lossy(&played), text);
    assert_eq!(played, bytes);
}

#[test]
fn what_asciinema_rec_writes_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let cast = dir.path().join("rec.cast");
    let shown = under_pty(&format!(
        "asciinema rec -q --stdin -c \"echo hello; printf 'x\\n'\" {}",
        quoted(&cast)
    ));
    assert!(
        String::from_utf8_lossy(&shown).contains("hello"),
        "{shown:?}"
    );

    let file = BufReader::new(File::open(&cast).unwrap());
    let mut reader = CastReader::new(file, CastReaderOptions::default()).unwrap();
    assert_eq!(reader.header().version, 2);
    let mut output = Vec::new();
    for event in reader.by_ref() {
        if let EventData::Output(bytes) = event.unwrap().data {
            output.extend_from_slice(&bytes);
        }
    }
    assert_eq!(reader.torn(), None);
    // The recorded command's terminal turns "\n" into "\r\n".
    assert_eq!(String::from_utf8(output).unwrap(), "hello\r\nx\r\n");
}
