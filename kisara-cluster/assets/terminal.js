// The web terminal: xterm.js on the session WebSocket of
// `GET /v1/containers/{container}/terminal/ws?ticket=…` (the frame protocol
// is described in kisara-cluster's http::terminal module).
"use strict";

(() => {
  const STDIN = 0;
  // Below the server's 64 KiB frame limit, with room for the stream byte.
  const MAX_STDIN_CHUNK = 16 * 1024;

  // Why the server closed the socket, by close code.
  const CLOSE_REASONS = {
    1000: "the program exited",
    1001: "the terminal was closed",
    1006: "the connection was lost",
    1009: "a message was too large",
    1011: "the server failed",
    4001: "idle timeout",
    4002: "the session's lifetime is over",
    4003: "the container's node is unreachable",
    4004: "the session could not be audited or recorded",
    4005: "the shell could not be started",
  };

  const statusLine = document.getElementById("status");
  const screen = document.getElementById("terminal");

  function setStatus(state, text) {
    statusLine.dataset.state = state;
    statusLine.textContent = text;
  }

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
    fontSize: 14,
    theme: { background: "#101114" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  fit.fit();
  showSize();

  // The grid's size, for people (the status tooltip) and for tests.
  function showSize() {
    screen.dataset.cols = String(term.cols);
    screen.dataset.rows = String(term.rows);
    statusLine.title = `${term.cols}×${term.rows}`;
  }

  // A line of ours, dim and apart from the program's output.
  function note(text, colour) {
    const style = colour ? `2;${colour}` : "2";
    term.write(`\r\n\x1b[${style}m[${text}]\x1b[0m\r\n`);
  }

  const params = new URLSearchParams(location.search);
  const container = params.get("container");
  const ticket = params.get("ticket");
  if (!container || !ticket) {
    setStatus("error", "no terminal to open");
    note("this page needs ?container=…&ticket=…: ask the platform for a new terminal link", 31);
    return;
  }
  // The ticket is single use: keep it out of the history and of reloads.
  history.replaceState(null, "", location.pathname);
  document.title = `Kisara terminal: ${container}`;

  const url = new URL(
    `../v1/containers/${encodeURIComponent(container)}/terminal/ws`,
    location.href,
  );
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({
    ticket,
    cols: String(term.cols),
    rows: String(term.rows),
  }).toString();

  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  let opened = false;
  let ended = null;

  function sendStdin(bytes) {
    if (socket.readyState !== WebSocket.OPEN) {
      return;
    }
    for (let at = 0; at < bytes.length; at += MAX_STDIN_CHUNK) {
      const chunk = bytes.subarray(at, at + MAX_STDIN_CHUNK);
      const frame = new Uint8Array(chunk.length + 1);
      frame[0] = STDIN;
      frame.set(chunk, 1);
      socket.send(frame);
    }
  }

  term.onData((data) => sendStdin(encoder.encode(data)));
  // Mouse reports outside UTF-8 come as a string of byte values.
  term.onBinary((data) => sendStdin(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  term.onTitleChange((title) => {
    document.title = title || `Kisara terminal: ${container}`;
  });
  term.onResize(({ cols, rows }) => {
    showSize();
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "resize", cols, rows }));
    }
  });

  // Refit when the window (or anything around the terminal) changes size,
  // once per frame at most.
  let refit = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(refit);
    refit = requestAnimationFrame(() => fit.fit());
  }).observe(screen);

  socket.addEventListener("open", () => {
    opened = true;
    setStatus("connecting", "connected, starting the shell…");
  });

  socket.addEventListener("message", (event) => {
    if (event.data instanceof ArrayBuffer) {
      // Byte 0 names the stream (1 stdout, 2 stderr): both go to the screen.
      term.write(new Uint8Array(event.data, 1));
      return;
    }
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      note(`unreadable message from the server: ${event.data}`, 31);
      return;
    }
    switch (frame.type) {
      case "started": {
        const recorded = frame.recording ? ", recorded" : "";
        setStatus("connected", `connected to ${frame.container} on ${frame.node}${recorded}`);
        term.focus();
        break;
      }
      case "error":
        note(`error (${frame.code}): ${frame.message}`, 31);
        break;
      case "ended": {
        ended = frame;
        const exit = frame.exit_code === null || frame.exit_code === undefined
          ? ""
          : `, exit code ${frame.exit_code}`;
        note(`session ended: ${frame.message}${exit}`);
        break;
      }
      default:
        break;
    }
  });

  socket.addEventListener("close", (event) => {
    const why = CLOSE_REASONS[event.code] || event.reason || "closed";
    if (!opened) {
      // The browser hides the HTTP answer of a refused upgrade.
      setStatus("error", "could not open the terminal");
      note("the terminal could not be opened: the ticket may have expired or been used already; ask the platform for a new link", 31);
      return;
    }
    if (ended) {
      setStatus("ended", `session ended: ${ended.message} (code ${event.code})`);
    } else {
      setStatus("error", `disconnected: ${why} (code ${event.code})`);
      note(`connection closed: ${why} (code ${event.code})`, 31);
    }
    // Nothing typed goes anywhere now: say so by hiding the cursor.
    term.options.disableStdin = true;
    term.write("\x1b[?25l");
  });
})();
