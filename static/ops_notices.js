// The ops page's suspended numbers and failing webhooks (its own module beside
// ops.js; wrapped so its names stay its own).
"use strict";

(() => {
  const token = takeParams(["token"]).token;
  const REFRESH_MS = 10000;

  function when(us) {
    return us ? new Date(Math.floor(us / 1000)).toISOString().replace("T", " ").slice(0, 19) : "";
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text === null || text === undefined ? "" : String(text);
      tr.appendChild(td);
    }
    return tr;
  }

  async function refresh() {
    try {
      const numbers = (await api(token, "GET", "/v1/ops/numbers/suspended")).numbers;
      const body = $("suspended-rows");
      body.textContent = "";
      for (const n of numbers) {
        body.appendChild(row([n.account_id, n.number, when(n.suspended_at_us),
          when(n.next_attempt_at_us), when(n.release_at_us)]));
      }
      $("suspended-count").textContent = "(" + numbers.length + ")";
      const hooks = (await api(token, "GET", "/v1/ops/webhooks?failing=1")).webhooks;
      const failing = $("failing-rows");
      failing.textContent = "";
      for (const w of hooks) {
        failing.appendChild(row([w.account_id || "(all accounts)", w.url, w.consecutive_failures,
          w.last_error || (w.last_status_code ? "HTTP " + w.last_status_code : ""),
          (w.last_attempt_at || "").replace("T", " ").slice(0, 19)]));
      }
      $("failing-count").textContent = "(" + hooks.length + ")";
      document.body.dataset.noticesReady = "1";
    } catch (err) {
      $("suspended-count").textContent = "(" + err.message + ")";
    }
  }

  if (token) {
    refresh();
    setInterval(refresh, REFRESH_MS);
  }
})();
