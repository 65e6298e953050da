// The customer's billing overview: live balance over a websocket, rates, pay
// now, automatic recharge, card on file and the activity list.
"use strict";

const RATE_ROWS = [
  ["call_outbound_per_minute_micros", "Phone call, outgoing", "per minute"],
  ["call_inbound_per_minute_micros", "Phone call, incoming", "per minute"],
  ["sms_outbound_micros", "Outgoing text message", "each"],
  ["sms_inbound_micros", "Incoming text message", "each"],
  ["ring_through_attempt_micros", "Ring-through connection attempt", "each"],
  ["number_purchase_micros", "Phone number purchase", "each"],
  ["number_renewal_micros", "Phone number renewal", "each"],
];
const ACTIVITY_PAGE = 50;

const params = takeParams(["account", "token"]);
const accountId = params.account;
const token = params.token;
const base = "/v1/accounts/" + encodeURIComponent(accountId);
const state = { account: null, labels: {}, served: new Set(), cursor: null, reloadTimer: null };
const chart = new BalanceChart($("chart"));

// ---- balance -----------------------------------------------------------

function showBalance(balance, reserved, available) {
  const el = $("balance");
  el.textContent = formatMicros(balance);
  el.dataset.balanceMicros = String(balance);
  $("reserved").textContent = formatMicros(reserved);
  $("available").textContent = formatMicros(available);
  $("available").dataset.availableMicros = String(available);
  const blocked = available <= 0;
  $("zero-banner").hidden = !blocked;
  $("balance-card").classList.toggle("zero", blocked);
}

function showRechargeState(recharge) {
  const parts = [];
  if (recharge.enabled) parts.push("Automatic recharge is on.");
  if (recharge.pending) parts.push("A recharge is pending.");
  if (recharge.last_failure) parts.push("The last automatic recharge failed: " + recharge.last_failure);
  $("recharge-state").textContent = parts.join(" ");
}

function applySnapshot(account) {
  state.account = account;
  $("account-name").textContent = account.account_id;
  showBalance(account.balance_micros, account.reserved_micros, account.available_micros);
  showRechargeState(account.recharge);
  showRates(account.rate_card);
  showCard(account.card);
  fillRechargeForm(account.recharge);
  chart.add(Date.now(), account.balance_micros);
}

function applyUpdate(change) {
  if (state.account) {
    // An "account" message (publish_account.lua) carries the whole recharge state
    // and the card on file, after a save, a deleted card or a recharge outcome.
    if (change.recharge) {
      state.account.recharge = change.recharge;
      fillRechargeForm(change.recharge);
    }
    if (change.card !== undefined) {
      state.account.card = change.card;
      showCard(change.card);
    }
    const r = state.account.recharge;
    if (change.recharge_pending !== undefined) r.pending = change.recharge_pending;
    if (change.recharge_last_failure !== undefined) r.last_failure = change.recharge_last_failure;
    showRechargeState(r);
  }
  // Messages without a balance (e.g. a recharge outcome) only touch the state above.
  if (change.balance_micros === undefined) return;
  showBalance(change.balance_micros, change.reserved_micros, change.available_micros);
  chart.add(Math.floor(change.at_us / 1000), change.balance_micros);
  scheduleActivityReload();
}

// ---- rates ----------------------------------------------------------------

function showRates(rc) {
  const rows = RATE_ROWS.map(([field, label, unit]) =>
    "<tr><th>" + label + "</th><td class='num'>" + formatMicros(rc[field]) + "</td><td>" + unit + "</td></tr>");
  rows.push("<tr><th>Call billing</th><td colspan='2'>first " + rc.call_minimum_seconds +
    " s, then every " + rc.call_increment_seconds + " s</td></tr>");
  $("rates").innerHTML = rows.join("");
}

// ---- endpoints that may not be served yet -------------------------------

function disableSection(section, formIds, message) {
  const note = $(section + "-unavailable");
  note.textContent = message;
  note.hidden = false;
  for (const id of formIds) {
    for (const el of $(id).querySelectorAll("input, button")) el.disabled = true;
  }
}

function missing(method, path) {
  return !state.served.has(method + " /v1/accounts/{account_id}" + path);
}

function checkServed() {
  const note = (what) => "Not available yet: this gateway does not serve " + what + ".";
  if (missing("POST", "/payments")) disableSection("pay", ["pay-form"], note("payments (POST …/payments)"));
  if (missing("PUT", "/recharge")) {
    disableSection("recharge", ["recharge-form"], note("recharge settings (PUT …/recharge)"));
  }
  if (missing("PUT", "/card") || missing("DELETE", "/card")) {
    disableSection("card", ["card-form"], note("card management (PUT/DELETE …/card)"));
    $("card-delete").disabled = true;
  }
  if (missing("GET", "/activity")) {
    disableSection("activity", ["activity-form"], note("the activity list (GET …/activity)"));
    $("activity-more").hidden = true;
  }
}

// An endpoint that answers 404 "not_found" (no route) is treated as missing.
function isMissingRoute(err) {
  return err instanceof ApiError && err.status === 404 && err.body.error === "not_found";
}

// ---- field errors -----------------------------------------------------------

function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function fieldError(inputId, message) {
  $(inputId + "-error").textContent = message;
  const input = $(inputId);
  if (input) input.setAttribute("aria-invalid", "true");
}

// ---- pay now ----------------------------------------------------------------

function newId(prefix) {
  if (window.crypto && crypto.randomUUID) return prefix + "-" + crypto.randomUUID();
  return prefix + "-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
}

$("pay-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = $("pay-form");
  clearErrors(form);
  $("pay-result").textContent = "";
  const amount = parseDollars($("pay-amount").value);
  if (amount === null || amount <= 0) {
    fieldError("pay-amount", "Enter an amount in dollars, for example 25.00.");
    return;
  }
  $("pay-submit").disabled = true;
  try {
    const paid = await api(token, "POST", base + "/payments", { payment_id: newId("pay"), amount_micros: amount });
    $("pay-result").textContent = "Paid " + formatMicros(amount) +
      (paid && paid.balance_micros !== undefined ? ". New balance " + formatMicros(paid.balance_micros) + "." : ".");
    $("pay-amount").value = "";
  } catch (err) {
    if (isMissingRoute(err)) disableSection("pay", ["pay-form"], "Payments are not available on this gateway yet.");
    else fieldError("pay-amount", err.message);
  } finally {
    $("pay-submit").disabled = missing("POST", "/payments");
  }
});

// ---- automatic recharge -------------------------------------------------------

const RECHARGE_FIELDS = {
  amount_micros: "recharge-amount", threshold_micros: "recharge-threshold",
  failure_email: "recharge-email", enabled: "recharge-enabled",
};

function fillRechargeForm(recharge) {
  if (document.activeElement && $("recharge-form").contains(document.activeElement)) return;
  $("recharge-enabled").checked = !!recharge.enabled;
  $("recharge-amount").value = dollarsInput(recharge.amount_micros);
  $("recharge-threshold").value = dollarsInput(recharge.threshold_micros);
  $("recharge-email").value = recharge.failure_email || "";
}

$("recharge-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = $("recharge-form");
  clearErrors(form);
  $("recharge-result").textContent = "";
  // Only the format is checked here; the gateway judges the rules (> $50,
  // >= $10, a card for enabling) and its 422 names the field shown below.
  const amount = parseDollars($("recharge-amount").value);
  const threshold = parseDollars($("recharge-threshold").value);
  let bad = false;
  if (amount === null) { fieldError("recharge-amount", "Enter an amount in dollars, for example 100.00."); bad = true; }
  if (threshold === null) { fieldError("recharge-threshold", "Enter an amount in dollars, for example 10.00."); bad = true; }
  if (bad) return;
  const body = {
    amount_micros: amount, threshold_micros: threshold,
    failure_email: $("recharge-email").value.trim(), enabled: $("recharge-enabled").checked,
  };
  $("recharge-save").disabled = true;
  try {
    const saved = await api(token, "PUT", base + "/recharge", body);
    $("recharge-result").textContent = "Recharge settings saved.";
    if (state.account && saved) {
      state.account.recharge = Object.assign(state.account.recharge, saved.recharge || saved);
      showRechargeState(state.account.recharge);
    }
  } catch (err) {
    if (isMissingRoute(err)) {
      disableSection("recharge", ["recharge-form"], "Recharge settings are not available on this gateway yet.");
    } else {
      const target = RECHARGE_FIELDS[err.body.field];
      if (target) fieldError(target, err.message);
      else $("recharge-result").textContent = err.message;
    }
  } finally {
    $("recharge-save").disabled = missing("PUT", "/recharge");
  }
});

// ---- card on file ---------------------------------------------------------------

function showCard(card) {
  if (card) {
    const brand = card.brand ? card.brand.charAt(0).toUpperCase() + card.brand.slice(1) : "Card";
    $("card-on-file").textContent = brand + " ending in " + card.last4 +
      ", expires " + String(card.exp_month).padStart(2, "0") + "/" + card.exp_year;
    $("card-delete").hidden = false;
  } else {
    $("card-on-file").textContent = "No card on file.";
    $("card-delete").hidden = true;
  }
}

$("card-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors($("card-form"));
  $("card-result").textContent = "";
  const pm = $("card-pm").value.trim();
  if (!pm) { fieldError("card-pm", "Enter the payment method id from Stripe."); return; }
  try {
    const card = await api(token, "PUT", base + "/card", { payment_method_id: pm });
    showCard(card);
    if (state.account) state.account.card = card;
    $("card-result").textContent = "Card registered.";
    $("card-pm").value = "";
  } catch (err) {
    if (isMissingRoute(err)) disableSection("card", ["card-form"], "Card management is not available on this gateway yet.");
    else fieldError("card-pm", err.message);
  }
});

$("card-delete").addEventListener("click", async () => {
  if (!window.confirm("Delete the card on file? Automatic recharge needs a card.")) return;
  try {
    await api(token, "DELETE", base + "/card");
    showCard(null);
    $("card-result").textContent = "Card deleted.";
  } catch (err) {
    $("card-result").textContent = err.message;
  }
});

// ---- activity -------------------------------------------------------------------

function isoDate(d) { return d.toISOString().slice(0, 10); }

function activityQuery() {
  const show = document.querySelector("input[name=show]:checked").value;
  const q = new URLSearchParams({ from: $("activity-from").value, to: $("activity-to").value, show });
  return q;
}

function entryRow(e) {
  const tr = document.createElement("tr");
  tr.className = e.amount_micros < 0 ? "debit" : "credit";
  const when = (e.at || "").replace("T", " ").replace(/\.\d+/, "").replace("Z", "");
  const cells = [when, e.label || state.labels[e.item] || e.item,
    formatMicros(e.amount_micros), formatMicros(e.balance_after_micros)];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i >= 2) td.className = "num";
    if (i === 1 && e.detail) td.title = e.detail;
    tr.appendChild(td);
  });
  return tr;
}

async function loadActivity(append) {
  if (missing("GET", "/activity")) return;
  $("activity-error").textContent = "";
  const q = activityQuery();
  q.set("limit", String(ACTIVITY_PAGE));
  if (append && state.cursor) q.set("cursor", state.cursor);
  try {
    const page = await api(token, "GET", base + "/activity?" + q.toString());
    const body = $("activity-rows");
    if (!append) body.textContent = "";
    const fragment = document.createDocumentFragment();
    for (const e of page.entries) fragment.appendChild(entryRow(e));
    body.appendChild(fragment);
    if (!append && page.entries.length === 0) {
      body.innerHTML = "<tr><td colspan='4' class='muted'>No activity in this range.</td></tr>";
    }
    state.cursor = page.next_cursor;
    $("activity-more").hidden = !page.next_cursor;
    if (!append) chart.prepend(page.entries.map((e) => [Math.floor(e.at_us / 1000), e.balance_after_micros]));
  } catch (err) {
    if (isMissingRoute(err)) disableSection("activity", ["activity-form"], "The activity list is not available on this gateway yet.");
    else $("activity-error").textContent = err.message;
  }
}

// New entries reach the activity list through the ledger writer, so after a
// live change the list is reloaded once things settle, not per change.
function scheduleActivityReload() {
  if (missing("GET", "/activity") || state.cursor) return;
  if ($("activity-to").value < isoDate(new Date())) return;
  clearTimeout(state.reloadTimer);
  state.reloadTimer = setTimeout(() => loadActivity(false), 2000);
}

$("activity-form").addEventListener("change", () => loadActivity(false));
$("activity-more").addEventListener("click", () => loadActivity(true));
$("activity-csv").addEventListener("click", async () => {
  try {
    const response = await fetch(base + "/activity.csv?" + activityQuery().toString(),
      { headers: { Authorization: "Bearer " + token } });
    if (!response.ok) throw new Error("The CSV export answered " + response.status + ".");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = accountId + "-activity.csv";
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (err) {
    $("activity-error").textContent = err.message;
  }
});

// ---- start --------------------------------------------------------------------------

async function start() {
  const today = new Date();
  $("activity-to").value = isoDate(today);
  $("activity-from").value = isoDate(new Date(today.getTime() - 30 * 86400000));
  if (!accountId || !token) {
    setStatus($("live-status"), "refused", "Open this page as /dashboard?account=<id>&token=<token>.");
    return;
  }
  liveSocket(base + "/live", token, {
    onFrame(frame) {
      if (frame.type === "snapshot") applySnapshot(frame.account);
      else if (frame.type === "update") applyUpdate(frame);
    },
    onStatus(kind, text) { setStatus($("live-status"), kind, text); },
  });
  state.served = await servedEndpoints();
  checkServed();
  try {
    const items = await api(token, "GET", "/v1/billing-items");
    for (const it of items.items) state.labels[it.item] = it.label;
  } catch (err) { /* labels also come with each activity entry */ }
  await loadActivity(false);
  document.body.dataset.ready = "1"; // every part knows whether it is served
}

start();
