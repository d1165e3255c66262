// oomtrace ui: the only script. Keeps the kill list live from /events
// (server-sent events of rows the server rendered and escaped); the
// browser's EventSource reconnects by itself, and the server reconnects
// to the collector. Pages read fine without it.
"use strict";

(function () {
  const table = document.querySelector("table[data-live]");
  const status = document.getElementById("live");
  function say(text, ok) {
    if (!status) return;
    status.textContent = text;
    status.className = "live " + (ok ? "ok" : "down");
  }
  if (!table) return;
  const body = document.getElementById("kills");
  const source = new EventSource(table.getAttribute("data-live"));
  source.addEventListener("kill", function (e) {
    const t = document.createElement("template");
    t.innerHTML = e.data;
    const row = t.content.querySelector("tr[data-id]");
    if (!row) return;
    const id = row.getAttribute("data-id");
    if (body.querySelector('tr[data-id="' + CSS.escape(id) + '"]')) return;
    row.classList.add("new");
    body.insertBefore(row, body.firstChild);
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
  });
  source.addEventListener("status", function (e) {
    say(e.data === "live" ? "live" : e.data, e.data === "live");
  });
  source.onerror = function () {
    say("ui server unreachable: reconnecting", false);
  };
})();
