// The operator console's only script: it makes the action buttons post with the session's
// CSRF token, and keeps the runs table and the run page up to date from the event stream.
"use strict";

const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";

async function act(button) {
  button.disabled = true;
  const res = await fetch(button.dataset.action, {
    method: "POST",
    headers: { "X-CSRF-Token": csrf },
    credentials: "same-origin",
  });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    alert((body.error && body.error.message) || ("failed: " + res.status));
    button.disabled = false;
    return;
  }
  if (button.dataset.then === "remove") {
    button.closest("tr").remove();
  } else {
    refreshRun();
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) {
    event.preventDefault();
    act(button);
  }
});

// The run page: reload the part that changes whenever something happens to this run. An
// event that arrives during a reload asks for one more, so the last state is always shown.
const runSection = document.getElementById("run");
let refreshing = false;
let again = false;
async function refreshRun() {
  if (!runSection) return;
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  try {
    do {
      again = false;
      const res = await fetch("/console/runs/" + runSection.dataset.run + "/live", { credentials: "same-origin" });
      if (res.ok) runSection.innerHTML = await res.text();
    } while (again);
  } finally {
    refreshing = false;
  }
}

// The runs table: update the rows it shows, and add new runs at the top of the first page.
const runsTable = document.getElementById("runs");
function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}
function badge(status) {
  const span = document.createElement("span");
  span.className = "badge " + status;
  span.dataset.status = status;
  span.textContent = status;
  return span;
}
function onRunEvent(e) {
  const row = document.getElementById("run-" + e.run_id);
  if (row) {
    const status = row.querySelector("td.status");
    status.replaceChildren(badge(e.status));
    row.querySelector("td.attempts").textContent = e.attempt;
    return;
  }
  if (e.kind !== "queued" || runsTable.dataset.live !== "true") return;
  if (runsTable.dataset.filterStatus && runsTable.dataset.filterStatus !== e.status) return;
  if (runsTable.dataset.filterAgent && runsTable.dataset.filterAgent !== e.agent_type) return;
  const tr = document.createElement("tr");
  tr.id = "run-" + e.run_id;
  tr.dataset.run = e.run_id;
  const link = document.createElement("a");
  link.href = "/console/runs/" + e.run_id;
  link.textContent = e.run_id.slice(0, 12);
  const first = document.createElement("td");
  first.appendChild(link);
  const status = cell("", "status");
  status.appendChild(badge(e.status));
  tr.append(first, cell(e.agent_type), cell(e.user_id), status, cell("", "num"), cell("", "num"),
    cell(String(e.attempt), "num attempts"), cell(new Date(e.at_ms).toISOString().replace("T", " ").slice(0, 19)));
  runsTable.tBodies[0].prepend(tr);
}

if (runSection || runsTable) {
  const events = new EventSource("/console/events");
  const kinds = ["queued", "started", "step_finished", "attempt_finished", "finished", "cancel_requested"];
  for (const kind of kinds) {
    events.addEventListener(kind, (message) => {
      const e = JSON.parse(message.data);
      e.kind = kind;
      if (runSection && e.run_id === runSection.dataset.run) refreshRun();
      if (runsTable) onRunEvent(e);
    });
  }
  // A missed stretch (reconnect, lag) is caught up by reloading what is shown.
  events.addEventListener("lagged", () => refreshRun());
}
