// The dashboard's phone numbers, low-balance alert and webhooks (its own module,
// beside dashboard.js; wrapped so its names stay its own).
"use strict";

(() => {
  const params = takeParams(["account", "token"]);
  const account = params.account;
  const token = params.token;
  const base = "/v1/accounts/" + encodeURIComponent(account);
  const EVENTS = ["balance.low", "balance.depleted", "recharge.succeeded", "recharge.failed",
    "payment.succeeded", "number.renewed", "number.renewal_failed", "number.released"];
  const REFRESH_MS = 15000;

  function day(us) {
    if (!us) return "";
    return new Date(Math.floor(us / 1000)).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function unavailable(section, err) {
    const note = $(section + "-unavailable");
    note.textContent = err.status === 404 && err.body.error === "not_found"
      ? "Not available yet on this gateway." : err.message;
    note.hidden = false;
  }

  async function loadNumbers() {
    try {
      const answer = await api(token, "GET", base + "/numbers");
      const body = $("numbers-rows");
      body.textContent = "";
      for (const n of answer.numbers) {
        const tr = document.createElement("tr");
        tr.className = n.status;
        let status = n.status;
        if (n.status === "suspended" && n.release_at_us) status += " (released " + day(n.release_at_us) + " if unpaid)";
        cell(tr, n.number);
        cell(tr, status);
        cell(tr, n.monthly_micros !== undefined ? formatMicros(n.monthly_micros) : "", "num");
        cell(tr, n.recorded === false ? "being recorded" : day(n.next_renewal_at_us));
        cell(tr, n.renewal === "switch" ? "your switch" : (n.renewal ? "automatic" : ""));
        body.appendChild(tr);
      }
      if (!answer.numbers.length) body.innerHTML = "<tr><td colspan='5' class='muted'>No phone numbers.</td></tr>";
      $("numbers-unavailable").hidden = true;
    } catch (err) { unavailable("numbers", err); }
  }

  async function loadAlerts() {
    try {
      const a = (await api(token, "GET", base)).alerts;
      if (!a) return;
      if (document.activeElement && $("alerts-form").contains(document.activeElement)) return;
      $("alerts-threshold").value = dollarsInput(a.low_balance_threshold_micros || 0);
      $("alerts-email").value = a.email || "";
    } catch (err) { unavailable("alerts", err); }
  }

  $("alerts-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const id of ["alerts-threshold-error", "alerts-email-error", "alerts-result"]) $(id).textContent = "";
    const threshold = parseDollars($("alerts-threshold").value || "0");
    if (threshold === null) { $("alerts-threshold-error").textContent = "Enter an amount in dollars, for example 20.00."; return; }
    try {
      await api(token, "PUT", base + "/alerts", {
        low_balance_threshold_micros: threshold, email: $("alerts-email").value.trim() });
      $("alerts-result").textContent = "Alert saved.";
    } catch (err) {
      const field = err.body.field === "email" ? "alerts-email" : "alerts-threshold";
      $(field + "-error").textContent = err.message;
    }
  });

  function deliveryLine(d) {
    const li = document.createElement("li");
    const code = d.last_status_code ? " HTTP " + d.last_status_code : (d.last_error ? " " + d.last_error : "");
    li.textContent = (d.last_attempt_at || d.created_at || "").replace("T", " ").slice(0, 19) + " " +
      d.type + ": " + d.status + " after " + d.attempts + " attempt(s)" + code;
    return li;
  }

  async function loadWebhooks() {
    try {
      const answer = await api(token, "GET", base + "/webhooks");
      const list = $("webhooks-list");
      list.textContent = "";
      for (const w of answer.webhooks) {
        const div = document.createElement("div");
        div.className = "hook" + (w.failing ? " failing" : "");
        const url = document.createElement("div");
        url.className = "url";
        url.textContent = w.url + (w.failing ? "  (failing: " + (w.last_error || "") + ")" : "");
        const events = document.createElement("div");
        events.className = "muted";
        events.textContent = w.events.join(", ");
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "Delete";
        remove.addEventListener("click", async () => {
          await api(token, "DELETE", base + "/webhooks/" + encodeURIComponent(w.webhook_id));
          loadWebhooks();
        });
        const recent = document.createElement("ul");
        for (const d of w.recent_deliveries) recent.appendChild(deliveryLine(d));
        div.append(url, events, recent, remove);
        list.appendChild(div);
      }
      $("webhooks-unavailable").hidden = true;
    } catch (err) { unavailable("webhooks", err); }
  }

  $("webhooks-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const id of ["webhooks-url-error", "webhooks-events-error", "webhooks-result"]) $(id).textContent = "";
    const events = EVENTS.filter((e) => $("hook-" + e).checked);
    try {
      const reg = await api(token, "POST", base + "/webhooks", { url: $("webhooks-url").value.trim(), events });
      const result = $("webhooks-result");
      result.textContent = "Webhook added. Its signing secret (shown once): ";
      const secret = document.createElement("span");
      secret.className = "secret";
      secret.textContent = reg.secret;
      result.appendChild(secret);
      $("webhooks-url").value = "";
      loadWebhooks();
    } catch (err) {
      $(err.body.field === "events" ? "webhooks-events-error" : "webhooks-url-error").textContent = err.message;
    }
  });

  for (const e of EVENTS) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = "hook-" + e;
    box.checked = true;
    label.append(box, " " + e);
    $("webhooks-events").appendChild(label);
  }

  if (account && token) {
    const all = () => Promise.all([loadNumbers(), loadAlerts(), loadWebhooks()]);
    all().then(() => { document.body.dataset.noticesReady = "1"; });
    setInterval(() => { loadNumbers(); loadWebhooks(); }, REFRESH_MS);
  }
})();
