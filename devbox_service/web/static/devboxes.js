// The devbox list follows status changes: the server sends each changed row rendered.
(() => {
  const table = document.getElementById("devboxes");
  if (!table || !window.EventSource) return;
  const body = table.tBodies[0];
  const state = document.getElementById("live-state");
  const source = new EventSource(table.dataset.events);
  source.onopen = () => { state.textContent = "Statuses update as they change."; };
  source.onerror = () => { state.textContent = "Lost the live connection; reconnecting…"; };
  source.addEventListener("row", (event) => {
    const change = JSON.parse(event.data);
    const holder = document.createElement("tbody");
    holder.innerHTML = change.html.trim();
    const fresh = holder.firstElementChild;
    const old = document.getElementById("devbox-" + change.id);
    if (old) old.replaceWith(fresh); else body.appendChild(fresh);
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
  });
  source.addEventListener("gone", (event) => {
    const old = document.getElementById("devbox-" + event.data);
    if (old) old.remove();
  });
})();
