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

  for (const box of document.querySelectorAll(".terminal[data-stream]")) {
    if (!window.Terminal || !window.EventSource) return;
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
    if (canType) term.onData(typer(box.dataset.keys));
  }
})();
