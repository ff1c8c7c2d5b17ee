// A build followed live: the run's events, folded into the step list as the server does.
(() => {
  const list = document.getElementById("build-steps");
  if (!list || !window.EventSource) return;
  const state = document.getElementById("build-state");
  if (state.dataset.finished) return;
  const message = document.getElementById("build-message");
  const form = document.getElementById("secret-form");
  const TERMINAL = (list.dataset.terminal || "").split(" ").filter(Boolean); // the server's list
  let skip = Number(list.dataset.seen || 0);
  const source = new EventSource(list.dataset.events);

  function setStep(index, stepState) {
    const item = document.getElementById("step-" + index);
    if (!item) return null;
    item.dataset.state = stepState;
    const badge = item.querySelector(".badge");
    badge.textContent = stepState;
    badge.className = "badge state-" + stepState;
    return item;
  }

  source.addEventListener("build", (raw) => {
    if (skip > 0) { skip -= 1; return; }
    const event = JSON.parse(raw.data);
    if (event.type === "cache") setStep(event.index, "cached");
    if (event.type === "step_started") setStep(event.index, "running");
    if (event.type === "step_completed") { setStep(event.index, "done"); form.hidden = true; }
    if (event.type === "step_failed") setStep(event.index, "failed");
    if (event.type === "output") {
      const item = document.getElementById("step-" + event.index);
      const out = item && item.querySelector("pre.output");
      if (out) { out.hidden = false; out.textContent += event.content; out.scrollTop = out.scrollHeight; }
    }
    if (event.type === "awaiting_input") {
      document.getElementById("secret-name").value = event.secretName;
      document.getElementById("secret-label").textContent = event.secretName;
      form.hidden = false;
    }
    if (event.message) message.textContent = event.message;
    if (TERMINAL.includes(event.type)) {
      source.close();
      form.hidden = true;
      state.dataset.finished = event.type;
      if (event.instanceId) {
        const link = document.getElementById("build-devbox");
        link.href = "/devboxes/" + encodeURIComponent(event.instanceId);
        link.hidden = false;
      }
      state.firstChild.textContent = event.type === "completed" ? "Completed. " : "Ended: " + event.type + ". ";
    }
  });
})();
