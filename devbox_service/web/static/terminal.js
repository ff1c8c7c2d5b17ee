// Live terminal views: each pane's screen, redrawn from the pane stream with xterm.js.
// Typing is offered only where the page says the user may type (the server checks again).
(() => {
  const main = document.getElementById("main");
  const csrf = main ? main.dataset.csrf : "";
  const KEYS = {
    "\r": "Enter", "\x7f": "BSpace", "\b": "BSpace", "\t": "Tab", "\x1b": "Escape",
    "\x1b[A": "Up", "\x1b[B": "Down", "\x1b[C": "Right", "\x1b[D": "Left",
    "\x1b[H": "Home", "\x1b[F": "End", "\x1b[3~": "DC", "\x1b[5~": "PPage", "\x1b[6~": "NPage",
  };

  function asKeys(data) {
    if (KEYS[data]) return { key: KEYS[data] };
    if (data.length === 1 && data.charCodeAt(0) < 27) {
      return { key: "C-" + String.fromCharCode(data.charCodeAt(0) + 96) };
    }
    if (data.startsWith("\x1b")) return null; // other escape sequences are not sent
    return { text: data };
  }

  function typer(url) {
    let queue = Promise.resolve();
    return (data) => {
      const keys = asKeys(data);
      if (!keys) return;
      queue = queue.then(() => fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(keys),
      })).catch(() => {});
    };
  }

  // One pane's view: xterm.js drawing each screen the pane stream sends.
  function attach(box) {
    if (!window.Terminal || !window.EventSource || box.dataset.attached) return;
    box.dataset.attached = "true";
    const canType = box.dataset.canType === "true";
    const fallback = box.querySelector("pre.screen");
    const term = new window.Terminal({
      rows: 24, cols: 100, convertEol: true, disableStdin: !canType, cursorBlink: canType,
      fontSize: 13, scrollback: 0,
    });
    const host = document.createElement("div");
    box.appendChild(host);
    term.open(host);
    if (fallback) fallback.hidden = true;
    const draw = (content) => {
      box.dataset.screen = content;
      term.write("\x1b[H\x1b[2J" + content);
    };
    draw(fallback ? fallback.textContent : "");
    const source = new EventSource(box.dataset.stream);
    source.addEventListener("screen", (event) => draw(JSON.parse(event.data).content));
    box.closeStream = () => source.close();
    if (canType) term.onData(typer(box.dataset.keys));
  }

  document.querySelectorAll(".terminal[data-stream]").forEach(attach);

  // The list of terminals follows the devbox: sessions started or ended, pause and resume.
  const list = document.getElementById("terminals");
  if (!list || !window.EventSource) return;
  const note = document.getElementById("terminals-note");
  const status = document.getElementById("status");
  const live = new EventSource(list.dataset.events);
  live.addEventListener("terminals", (event) => {
    const change = JSON.parse(event.data);
    const wanted = new Set(change.panes.map((pane) => pane.id));
    for (const section of list.querySelectorAll("section.terminal-view")) {
      if (wanted.has(section.dataset.pane)) continue;
      const box = section.querySelector(".terminal");
      if (box && box.closeStream) box.closeStream();
      section.remove();
    }
    const shown = new Set(
      Array.from(list.querySelectorAll("section.terminal-view"), (s) => s.dataset.pane));
    for (const pane of change.panes) {
      if (shown.has(pane.id)) continue;
      const holder = document.createElement("div");
      holder.innerHTML = pane.html.trim();
      const section = holder.firstElementChild;
      list.appendChild(section);
      section.querySelectorAll(".terminal[data-stream]").forEach(attach);
    }
    note.textContent = change.note || "";
    note.hidden = !change.note;
    if (status) {
      status.textContent = change.status;
      status.className = "badge status-" + change.status;
    }
  });
})();
