// The recording player: asciinema-player on the asciicast v2 file of
// `GET /v1/recordings/{recording}/cast?ticket=…`, with the commands (the
// cast's "m" marker events) listed as links that seek to them.
"use strict";

(async () => {
  const statusLine = document.getElementById("status");
  const markerList = document.getElementById("markers");

  function setStatus(state, text) {
    statusLine.dataset.state = state;
    statusLine.textContent = text;
  }

  const params = new URLSearchParams(location.search);
  const recording = params.get("recording");
  const ticket = params.get("ticket");
  if (!recording || !ticket) {
    setStatus("error", "this page needs ?recording=…&ticket=…: ask for a new player link");
    return;
  }
  // Keep the ticket out of the history and of reloads.
  history.replaceState(null, "", location.pathname);
  document.title = `Kisara recording: ${recording}`;

  const url = new URL(`../v1/recordings/${encodeURIComponent(recording)}/cast`, location.href);
  url.search = new URLSearchParams({ ticket }).toString();

  // Fetched here rather than by the player: the markers are read from the
  // same text, and a refusal shows the API's message.
  let cast;
  try {
    const response = await fetch(url, { cache: "no-store", credentials: "omit" });
    cast = await response.text();
    if (!response.ok) {
      let message = cast;
      try {
        message = JSON.parse(cast).error.message;
      } catch {
        // Not the API's JSON error: show the body as it came.
      }
      setStatus("error", `cannot load recording ${recording}: ${message} (HTTP ${response.status})`);
      return;
    }
  } catch (error) {
    setStatus("error", `cannot load recording ${recording}: ${error}`);
    return;
  }

  const { markers, end } = readEvents(cast);
  let player;
  try {
    player = AsciinemaPlayer.create({ data: cast }, document.getElementById("player"), {
      fit: "width",
      idleTimeLimit: 2,
      // Show the last screen until played, rather than an empty one.
      poster: `npt:${Math.ceil(end)}`,
    });
  } catch (error) {
    setStatus("error", `cannot play recording ${recording}: ${error}`);
    return;
  }

  for (const [index, marker] of markers.entries()) {
    const item = document.createElement("li");
    if (marker.label.startsWith("denied: ")) {
      item.className = "denied";
    }
    const link = document.createElement("a");
    link.href = `#command-${index + 1}`;
    link.dataset.time = String(marker.time);
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = `${formatTime(marker.time)} `;
    link.append(time, marker.label);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      player.seek(marker.time);
    });
    item.append(link);
    markerList.append(item);
  }
  const count = markers.length === 1 ? "1 command" : `${markers.length} commands`;
  setStatus("ready", `recording ${recording}: ${formatTime(end)}, ${count}`);

  // The markers (time and label) and the time of the last event of an
  // asciicast v2 text: a header line, then one [time, code, data] a line.
  function readEvents(text) {
    const found = [];
    let last = 0;
    for (const line of text.split("\n").slice(1)) {
      if (!line.trim()) {
        continue;
      }
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        continue; // the player reports a broken cast itself
      }
      if (!Array.isArray(event) || typeof event[0] !== "number") {
        continue;
      }
      last = Math.max(last, event[0]);
      if (event[1] === "m") {
        found.push({ time: event[0], label: String(event[2]) });
      }
    }
    return { markers: found, end: last };
  }

  function formatTime(seconds) {
    const whole = Math.floor(seconds);
    const minutes = Math.floor(whole / 60);
    return `${minutes}:${String(whole % 60).padStart(2, "0")}`;
  }
})();
