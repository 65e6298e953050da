// The customer's billing overview. The page is a view of the server's state:
// the live socket sends a snapshot, then every change (balance frames from the
// scripts, "account" frames when the card or the recharge state changes), and
// everything shown is drawn from that state. Actions (pay, card, recharge
// settings) each own one message, which goes when the next action starts.
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
// Live frames name the item; the durable entry that replaces the line a moment
// later (through the ledger) has the full words (metering/entry_words.py).
const LIVE_WORDS = {
  call_outbound: "Outgoing call", call_inbound: "Incoming call",
  sms_outbound: "Outgoing text message", sms_inbound: "Incoming text message",
  ring_through_attempt: "Ring-through connection attempt",
  number_purchase: "Phone number purchase", number_renewal: "Phone number renewal",
  funds_added: "Funds added",
};
const ITEM_COLORS = {
  call_outbound: "#2a6df4", call_inbound: "#7aa5f8", sms_outbound: "#1e7d32", sms_inbound: "#7cc383",
  ring_through_attempt: "#b26a00", number_purchase: "#8e44ad", number_renewal: "#c39bd3",
};
const MONEY_EVENTS = new Set(["debit", "credit", "commit", "expire"]);
const ACTIVITY_PAGE = 50;
const HEAD_REFRESH_MS = 250; // the ledger writer commits in batches (~200 ms)
const HEAD_REFRESH_TRIES = 40;
const USAGE_REFRESH_MS = 1000; // after a change: once the ledger writer has it
const USAGE_REFRESH_TRIES = 30;

const params = takeParams(["account", "token"]);
const accountId = params.account;
const token = params.token;
const base = "/v1/accounts/" + encodeURIComponent(accountId);
const meta = (name) => (document.querySelector("meta[name='" + name + "']") || {}).content || "";
const [PAY_MIN, PAY_MAX, RECHARGE_MAX] = meta("payment-limits").split(" ").map(Number);

const state = {
  account: null, // the server's account (snapshot, then frames)
  served: new Set(),
  refused: false,
  digits: 2, // decimal places the rate card needs, used for every usage amount
};
const activity = {
  rows: new Map(), // seq -> <tr>
  cursor: null,
  lowestSeq: Infinity, // the oldest entry loaded (for "whatever page is loaded")
  pending: new Set(), // seqs shown from a live frame, not yet confirmed by the ledger
  headTimer: 0, headTries: 0, generation: 0,
};
const usageState = { timer: 0, wantSeq: 0, tries: 0 };
const stripeState = { stripe: null, elements: null, card: null };
const balanceChart = new BalanceChart($("chart"));
const spendChart = new SpendChart($("spend-chart"), ITEM_COLORS);
const money = (micros) => formatMicros(micros, state.digits);

// ---- the account, from the server -------------------------------------------------

// Decimal places the rate card needs: its prices, and what one billing increment
// and the call minimum cost (the per-second arithmetic rounds up to a micro).
function rateCardDigits(rc) {
  let digits = 2;
  for (const [field] of RATE_ROWS) digits = Math.max(digits, digitsNeeded(rc[field]));
  for (const perMinute of [rc.call_outbound_per_minute_micros, rc.call_inbound_per_minute_micros]) {
    for (const seconds of [rc.call_increment_seconds, rc.call_minimum_seconds]) {
      const exact = perMinute * seconds % 60 === 0;
      digits = Math.max(digits, exact ? digitsNeeded(perMinute * seconds / 60) : 6);
    }
  }
  return digits;
}

function applySnapshot(account) {
  state.account = account;
  state.digits = rateCardDigits(account.rate_card);
  $("account-name").textContent = account.account_id;
  renderBalance();
  renderRecharge();
  renderRates();
  renderCard();
  fillRechargeForm();
  balanceChart.add(Date.now(), account.balance_micros);
}

function applyUpdate(change) {
  const a = state.account;
  if (!a || change.seq < a.seq) return; // older than what is shown
  if (change.balance_micros !== undefined) {
    a.balance_micros = change.balance_micros;
    a.reserved_micros = change.reserved_micros;
    a.available_micros = change.available_micros;
    a.seq = change.seq;
    a.recharge.pending = !!change.recharge_pending;
    a.recharge.pending_since_us = change.recharge_pending ? change.recharge_pending_since_us || a.recharge.pending_since_us : null;
    renderBalance();
    renderRecharge();
    balanceChart.add(Math.floor(change.at_us / 1000), change.balance_micros);
    if (MONEY_EVENTS.has(change.event) && change.amount_micros !== 0) {
      showLiveEntry(change);
      usageState.wantSeq = Math.max(usageState.wantSeq, change.seq);
      usageState.tries = 0;
      scheduleUsageRefresh();
    }
  }
}

// An "account" frame: the whole recharge state and the card, as the server has them.
function applyAccountState(frame) {
  const a = state.account;
  if (!a) return;
  a.recharge = frame.recharge;
  a.card = frame.card;
  renderRecharge();
  renderCard();
  fillRechargeForm();
}

// ---- balance, recharge state, card, rates -----------------------------------------

function renderBalance() {
  const a = state.account;
  const el_ = $("balance");
  el_.textContent = money(a.balance_micros);
  el_.dataset.balanceMicros = String(a.balance_micros);
  $("reserved").textContent = money(a.reserved_micros);
  $("available").textContent = money(a.available_micros);
  $("available").dataset.availableMicros = String(a.available_micros);
  const blocked = a.available_micros <= 0;
  $("zero-banner").hidden = !blocked;
  $("balance-card").classList.toggle("zero", blocked);
}

function cardWords(card) {
  const brand = card.brand ? card.brand.charAt(0).toUpperCase() + card.brand.slice(1) : "Card";
  return brand + " ending in " + card.last4;
}

function renderRecharge() {
  const r = state.account.recharge;
  let text, kind;
  if (r.pending) {
    kind = "pending";
    text = "A recharge of " + formatMicros(r.amount_micros || 0) + " is pending" +
      (r.pending_since_us ? " since " + formatWhen(r.pending_since_us) : "") + ".";
  } else if (r.enabled) {
    kind = "on";
    text = "Automatic recharge is on: " + formatMicros(r.amount_micros) + " when the balance falls below " +
      formatMicros(r.threshold_micros) + ".";
  } else {
    kind = "off";
    text = "Automatic recharge is off.";
  }
  $("recharge-state").textContent = text;
  $("recharge-state").dataset.state = kind;
  const failure = $("recharge-failure");
  if (r.last_failure) {
    let words = "The automatic recharge failed" +
      (r.last_failure_at_us ? " on " + formatWhen(r.last_failure_at_us) : "") + ": " + r.last_failure;
    if (r.pending && r.next_attempt_at_us) {
      words += " We will try again on " + formatWhen(r.next_attempt_at_us) + ", or as soon as you save another card.";
    } else if (r.pending) {
      words += " Save another card or pay now.";
    }
    failure.textContent = words;
    failure.hidden = false;
  } else {
    failure.textContent = "";
    failure.hidden = true;
  }
}

function renderCard() {
  const card = state.account.card;
  if (card) {
    $("card-on-file").textContent = cardWords(card) + ", expires " +
      String(card.exp_month).padStart(2, "0") + "/" + card.exp_year;
    $("card-delete").hidden = false;
    $("card-label").textContent = "Replace it with another card";
    $("pay-card").textContent = cardWords(card);
  } else {
    $("card-on-file").textContent = "No card on file.";
    $("card-delete").hidden = true;
    $("card-label").textContent = "Add a card";
    $("pay-card").textContent = "your card on file (add one below)";
  }
}

function renderRates() {
  const rc = state.account.rate_card;
  const body = $("rates");
  body.textContent = "";
  for (const [field, label, unit] of RATE_ROWS) {
    const tr = el("tr");
    tr.append(el("th", "", label), el("td", "num", money(rc[field])), el("td", "", unit));
    body.appendChild(tr);
  }
  const tr = el("tr");
  const td = el("td", "", "first " + rc.call_minimum_seconds + " s, then every " + rc.call_increment_seconds + " s");
  td.colSpan = 2;
  tr.append(el("th", "", "Call billing"), td);
  body.appendChild(tr);
}

// ---- parts whose endpoint this gateway does not serve -------------------------------

function disableSection(section, formIds, message) {
  const note = $(section + "-unavailable");
  note.textContent = message;
  note.hidden = false;
  for (const id of formIds) {
    for (const input of $(id).querySelectorAll("input, button")) input.disabled = true;
  }
}

function missing(method, path) {
  return !state.served.has(method + " /v1/accounts/{account_id}" + path);
}

function checkServed() {
  const note = (what) => "Not available yet: this gateway does not serve " + what + ".";
  if (missing("POST", "/payments")) disableSection("pay", ["pay-form"], note("payments (POST …/payments)"));
  if (missing("PUT", "/recharge")) disableSection("recharge", ["recharge-form"], note("recharge settings (PUT …/recharge)"));
  if (missing("PUT", "/card") || missing("DELETE", "/card") || missing("POST", "/card/setup-intents")) {
    disableSection("card", ["card-form"], note("card management (…/card)"));
    $("card-delete").disabled = true;
  }
  if (missing("GET", "/activity")) {
    disableSection("activity", ["activity-form"], note("the activity list (GET …/activity)"));
    $("activity-more").hidden = true;
  }
  if (missing("GET", "/usage")) disableSection("usage", [], note("usage totals (GET …/usage)"));
}

// ---- a link that does not open this account ------------------------------------------

function refuse(text) {
  if (state.refused) return;
  state.refused = true;
  $("main").hidden = true;
  const box = $("refused");
  box.textContent = text + " Ask for a new link to your billing overview.";
  box.hidden = false;
}

// ---- actions and their messages ----------------------------------------------------

// Every action starts by clearing every message on the page: a message belongs
// to the action that produced it.
function startAction() {
  for (const node of document.querySelectorAll(".result, .field-error")) node.textContent = "";
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function fieldError(id, message) {
  $(id + "-error").textContent = message;
  const input = $(id);
  if (input && input.tagName === "INPUT") input.setAttribute("aria-invalid", "true");
}

function result(section, message) { $(section + "-result").textContent = message; }

// What went wrong, in words that say what to do. Field rules the page knows are
// checked before sending; this covers what only the server can say.
function errorWords(err) {
  const code = err.body.error;
  if (err.status === 0) return err.message;
  if (err.status === 401 || err.status === 403) return "This link may not change this account.";
  if (code === "card_declined") return "Your card was declined" + (err.body.reason ? " (" + declineReason(err.body.reason) + ")" : "") + ". Nothing was charged. Try another card.";
  if (code === "no_card_on_file") return "Add a card first (below), then pay.";
  if (code === "payment_failed") return "That payment failed and nothing was charged. Try again.";
  if (code === "unavailable") return "The payment service is not answering right now. Nothing was charged; try again in a minute.";
  if (code === "rate_limited") return "Too many attempts. Wait a moment and try again.";
  return err.message;
}

function declineReason(reason) {
  const text = String(reason).split(":").slice(1).join(":").trim();
  return text ? text.replace(/\.$/, "").toLowerCase() : "no reason given";
}

function newId(prefix) {
  if (window.crypto && crypto.randomUUID) return prefix + "-" + crypto.randomUUID();
  return prefix + "-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
}

async function act(button, work) {
  startAction();
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403) && !err.body.field) {
      refuse("This link is not valid for this account.");
    }
    throw err;
  } finally {
    button.disabled = false;
  }
}

// ---- pay now ------------------------------------------------------------------------

function payAmountError(amount) {
  if (amount === null || amount <= 0) return "Enter an amount in dollars, for example 25.00.";
  if (amount % 10000) return "Enter whole cents, for example 25.50.";
  if (PAY_MIN && amount < PAY_MIN) return "Enter at least " + formatMicros(PAY_MIN) + ".";
  if (PAY_MAX && amount > PAY_MAX) return "Enter at most " + formatMicros(PAY_MAX) + ".";
  return "";
}

$("pay-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act($("pay-submit"), async () => {
    const amount = parseDollars($("pay-amount").value);
    const problem = payAmountError(amount);
    if (problem) { fieldError("pay-amount", problem); return; }
    if (!state.account.card) { fieldError("pay-amount", "Add a card first (below), then pay."); return; }
    const request = { payment_id: newId("pay"), amount_micros: amount };
    try {
      const paid = await payWithAuthentication(request);
      $("pay-amount").value = "";
      showPaid(paid);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      fieldError("pay-amount", errorWords(err));
    }
  }).catch(reportBug);
});

// A card whose bank asks for authentication: Stripe.js shows the bank's check
// (confirmCardPayment), then the same payment request is sent again and the
// gateway credits it once Stripe says it succeeded.
async function payWithAuthentication(request) {
  try {
    return await api(token, "POST", base + "/payments", request);
  } catch (err) {
    if (!(err instanceof ApiError) || err.body.error !== "authentication_required") throw err;
    result("pay", "Your bank asks you to confirm this payment…");
    const stripe = await loadStripe();
    const outcome = await stripe.confirmCardPayment(err.body.client_secret);
    if (outcome.error) {
      throw new ApiError(402, { error: "card_declined", message: outcome.error.message, reason: "authentication_failed: " + outcome.error.message });
    }
    return await api(token, "POST", base + "/payments", request);
  }
}

function showPaid(paid) {
  const node = $("pay-result");
  node.textContent = "Paid " + formatMicros(paid.amount_micros) +
    (state.account.card ? " with " + cardWords(state.account.card) : "") + ". ";
  if (paid.receipt_url) {
    const link = el("a", "receipt-link", "View the receipt");
    link.href = paid.receipt_url;
    link.target = "_blank";
    link.rel = "noopener";
    node.appendChild(link);
  }
}

// ---- card on file: Stripe.js card element ---------------------------------------------

let stripeLoading = null;
function loadStripe() {
  if (stripeLoading) return stripeLoading;
  stripeLoading = new Promise((resolve, reject) => {
    if (window.Stripe) { resolve(window.Stripe(meta("stripe-key"))); return; }
    const script = document.createElement("script");
    script.src = meta("stripe-js");
    script.onload = () => (window.Stripe ? resolve(window.Stripe(meta("stripe-key"))) : reject(new Error("no Stripe")));
    script.onerror = () => reject(new Error("Stripe.js did not load"));
    document.head.appendChild(script);
  });
  stripeLoading.catch(() => { stripeLoading = null; });
  return stripeLoading;
}

// A fresh, empty card element (after a card is saved, the typed one goes).
function newCardElement() {
  if (stripeState.card) stripeState.card.destroy();
  stripeState.card = stripeState.elements.create("card", { hidePostalCode: false });
  stripeState.card.mount("#card-element");
}

async function mountCardElement() {
  try {
    stripeState.stripe = await loadStripe();
    stripeState.elements = stripeState.stripe.elements();
    newCardElement();
    document.body.dataset.cardElement = "1";
  } catch (err) {
    $("card-error").textContent = "Card entry is not available right now (Stripe could not be reached). Try again later.";
    $("card-register").disabled = true;
  }
}

$("card-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act($("card-register"), async () => {
    if (!stripeState.card) { $("card-error").textContent = "Card entry is still loading; try again in a moment."; return; }
    try {
      const setup = await api(token, "POST", base + "/card/setup-intents");
      const outcome = await stripeState.stripe.confirmCardSetup(setup.client_secret, {
        payment_method: { card: stripeState.card },
      });
      if (outcome.error) {
        $("card-error").textContent = (outcome.error.message || "The card was refused.") + " Check the card details or use another card.";
        return;
      }
      const card = await api(token, "PUT", base + "/card", { setup_intent_id: setup.setup_intent_id });
      state.account.card = card;
      renderCard();
      result("card", "Card saved: " + cardWords(card) + ".");
      newCardElement();
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      $("card-error").textContent = errorWords(err);
    }
  }).catch(reportBug);
});

$("card-delete").addEventListener("click", () => {
  if (!window.confirm("Delete the card on file? Automatic recharge needs a card and is turned off.")) return;
  act($("card-delete"), async () => {
    try {
      await api(token, "DELETE", base + "/card");
      state.account.card = null;
      state.account.recharge.enabled = false;
      renderCard();
      renderRecharge();
      fillRechargeForm();
      result("card", "Card deleted. Automatic recharge is off.");
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      result("card", errorWords(err));
    }
  }).catch(reportBug);
});

// ---- automatic recharge ---------------------------------------------------------------

const RECHARGE_INPUTS = {
  enabled: "recharge-enabled", amount_micros: "recharge-amount",
  threshold_micros: "recharge-threshold", failure_email: "recharge-email",
};
const edited = new Set(); // inputs the customer changed since the form was last filled

for (const id of Object.values(RECHARGE_INPUTS)) $(id).addEventListener("input", () => edited.add(id));

// The form shows the server's settings, except fields the customer is editing.
function fillRechargeForm() {
  const r = state.account.recharge;
  const values = {
    "recharge-amount": dollarsInput(r.amount_micros), "recharge-threshold": dollarsInput(r.threshold_micros),
    "recharge-email": r.failure_email || "",
  };
  if (!edited.has("recharge-enabled")) $("recharge-enabled").checked = !!r.enabled;
  for (const [id, value] of Object.entries(values)) if (!edited.has(id)) $(id).value = value;
}

function rechargeProblems(amount, threshold, email, enabled) {
  const problems = [];
  if (amount === null || amount % 10000) problems.push(["recharge-amount", "Enter the amount in dollars and cents, for example 75.00."]);
  else if (amount <= 50 * MICROS_PER_USD) problems.push(["recharge-amount", "Enter more than $50.00."]);
  else if (RECHARGE_MAX && amount > RECHARGE_MAX) problems.push(["recharge-amount", "Enter at most " + formatMicros(RECHARGE_MAX) + "."]);
  if (threshold === null) problems.push(["recharge-threshold", "Enter an amount in dollars, for example 10.00."]);
  else if (threshold < 10 * MICROS_PER_USD) problems.push(["recharge-threshold", "Enter at least $10.00."]);
  else if (amount !== null && threshold >= amount) {
    problems.push(["recharge-threshold", "Enter less than the recharge amount (" + formatMicros(amount) +
      "): one recharge has to lift the balance above it."]);
  }
  if (!/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(email)) problems.push(["recharge-email", "Enter an email address, for example billing@example.com."]);
  if (enabled && !state.account.card) problems.push(["recharge-enabled", "Add a card first: automatic recharge charges your card on file."]);
  return problems;
}

$("recharge-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act($("recharge-save"), async () => {
    const amount = parseDollars($("recharge-amount").value);
    const threshold = parseDollars($("recharge-threshold").value);
    const email = $("recharge-email").value.trim();
    const enabled = $("recharge-enabled").checked;
    const problems = rechargeProblems(amount, threshold, email, enabled);
    for (const [id, message] of problems) fieldError(id, message);
    if (problems.length) return;
    try {
      const saved = await api(token, "PUT", base + "/recharge",
        { amount_micros: amount, threshold_micros: threshold, failure_email: email, enabled });
      edited.clear();
      Object.assign(state.account.recharge, {
        enabled: saved.enabled, amount_micros: saved.amount_micros,
        threshold_micros: saved.threshold_micros, failure_email: saved.failure_email,
      });
      renderRecharge();
      fillRechargeForm();
      result("recharge", "Recharge settings saved.");
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      const target = RECHARGE_INPUTS[err.body.field];
      if (target) fieldError(target, err.message.charAt(0).toUpperCase() + err.message.slice(1) + ".");
      else result("recharge", errorWords(err));
    }
  }).catch(reportBug);
});

// ---- activity: pages from the ledger, new lines live --------------------------------

function activityFilter() {
  return {
    from: $("activity-from").value, to: $("activity-to").value,
    show: document.querySelector("input[name=show]:checked").value,
  };
}

function activityQuery() {
  const f = activityFilter();
  const q = new URLSearchParams({ show: f.show });
  if (f.from) q.set("from", localDayInstant(f.from, false));
  if (f.to) q.set("to", localDayInstant(f.to, true));
  return q;
}

// Whether a change belongs in the list as filtered now.
function inFilter(atUs, amount) {
  const f = activityFilter();
  if (f.show === "debits" && amount >= 0) return false;
  if (f.show === "credits" && amount <= 0) return false;
  const day = localDay(new Date(Math.floor(atUs / 1000)));
  return (!f.from || day >= f.from) && (!f.to || day <= f.to);
}

function entryRow(e, provisional) {
  const tr = el("tr", (e.amount_micros < 0 ? "debit" : "credit") + (provisional ? " provisional" : ""));
  tr.dataset.seq = String(e.seq);
  const what = el("td", "what", e.description || LIVE_WORDS[e.item] || e.item);
  if (e.receipt_url) {
    const link = el("a", "receipt-link", "Receipt");
    link.href = e.receipt_url;
    link.target = "_blank";
    link.rel = "noopener";
    what.append(" ", link);
  }
  tr.append(el("td", "when", formatWhen(e.at_us)), what,
    el("td", "num", money(e.amount_micros)), el("td", "num", money(e.balance_after_micros)));
  return tr;
}

// Put a row in its place: newest (highest seq) first.
function placeRow(seq, tr) {
  const body = $("activity-rows");
  const old = activity.rows.get(seq);
  if (old) { old.replaceWith(tr); activity.rows.set(seq, tr); return; }
  const empty = body.querySelector("tr.empty");
  if (empty) empty.remove();
  let next = null;
  for (const row of body.children) {
    if (Number(row.dataset.seq) < seq) { next = row; break; }
  }
  body.insertBefore(tr, next);
  activity.rows.set(seq, tr);
}

function showLiveEntry(change) {
  if (missing("GET", "/activity") || !inFilter(change.at_us, change.amount_micros)) return;
  if (activity.rows.has(change.seq)) return;
  const entry = { seq: change.seq, at_us: change.at_us, item: change.item,
    amount_micros: change.amount_micros, balance_after_micros: change.balance_micros };
  placeRow(change.seq, entryRow(entry, true));
  activity.pending.add(change.seq);
  scheduleHeadRefresh(true);
}

// The newest page again, merged in by seq: live lines get their full words,
// and anything that arrived meanwhile is added, whatever older pages are loaded.
function scheduleHeadRefresh(fresh) {
  if (fresh) activity.headTries = 0;
  if (activity.headTimer) return;
  activity.headTimer = setTimeout(refreshHead, HEAD_REFRESH_MS);
}

async function refreshHead() {
  activity.headTimer = 0;
  const generation = activity.generation;
  const q = activityQuery();
  q.set("limit", String(ACTIVITY_PAGE));
  let page;
  try {
    page = await api(token, "GET", base + "/activity?" + q.toString());
  } catch (err) {
    page = null;
  }
  if (page && generation === activity.generation) {
    for (const e of page.entries) {
      const known = activity.rows.get(e.seq);
      if (known && !activity.pending.has(e.seq)) continue;
      if (!known && e.seq < activity.lowestSeq && activity.cursor) continue; // an older page's
      placeRow(e.seq, entryRow(e, false));
      activity.pending.delete(e.seq);
    }
  }
  if (activity.pending.size && ++activity.headTries < HEAD_REFRESH_TRIES) scheduleHeadRefresh(false);
}

async function loadActivity(append) {
  if (missing("GET", "/activity")) return;
  $("activity-error").textContent = "";
  const q = activityQuery();
  q.set("limit", String(ACTIVITY_PAGE));
  if (append && activity.cursor) q.set("cursor", activity.cursor);
  if (!append) activity.generation++;
  const generation = activity.generation;
  try {
    const page = await api(token, "GET", base + "/activity?" + q.toString());
    if (generation !== activity.generation) return; // the filters changed meanwhile
    const body = $("activity-rows");
    if (!append) {
      body.textContent = "";
      activity.rows.clear();
      activity.pending.clear();
      activity.lowestSeq = Infinity;
    }
    const fragment = document.createDocumentFragment();
    for (const e of page.entries) {
      const tr = entryRow(e, false);
      activity.rows.set(e.seq, tr);
      activity.lowestSeq = Math.min(activity.lowestSeq, e.seq);
      fragment.appendChild(tr);
    }
    body.appendChild(fragment);
    if (!body.children.length) {
      const tr = el("tr", "empty");
      const td = el("td", "muted", "No activity in this range.");
      td.colSpan = 4;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    activity.cursor = page.next_cursor;
    $("activity-more").hidden = !page.next_cursor;
    if (!append) balanceChart.prepend(page.entries.map((e) => [Math.floor(e.at_us / 1000), e.balance_after_micros]));
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) $("activity-error").textContent = "Check the dates: " + err.message + ".";
    else $("activity-error").textContent = errorWords(err);
  }
}

$("activity-form").addEventListener("change", () => { loadActivity(false); loadUsage(); });
$("activity-more").addEventListener("click", () => loadActivity(true));
$("activity-csv").addEventListener("click", async () => {
  try {
    const response = await fetch(base + "/activity.csv?" + activityQuery().toString(),
      { headers: { Authorization: "Bearer " + token } });
    if (!response.ok) throw new Error("The download did not work (the service answered " + response.status + "). Try a shorter date range.");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = accountId + "-activity.csv";
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (err) {
    $("activity-error").textContent = err.message;
  }
});

// ---- usage at a glance ----------------------------------------------------------------

function scheduleUsageRefresh() {
  const f = activityFilter();
  if (f.to && f.to < localDay(new Date())) return; // the range is in the past
  if (usageState.timer) return;
  usageState.timer = setTimeout(() => { usageState.timer = 0; loadUsage(); }, USAGE_REFRESH_MS);
}

async function loadUsage() {
  if (missing("GET", "/usage")) return;
  const f = activityFilter();
  if (!f.from || !f.to) return;
  try {
    const q = new URLSearchParams({ from: f.from, to: f.to, time_zone: TIME_ZONE });
    const usage = await api(token, "GET", base + "/usage?" + q.toString());
    renderUsage(usage);
    // A change seen live reaches the ledger a moment later: ask again until it is in.
    if (usage.last_seq < usageState.wantSeq && ++usageState.tries < USAGE_REFRESH_TRIES) scheduleUsageRefresh();
  } catch (err) {
    $("usage-unavailable").textContent = errorWords(err);
    $("usage-unavailable").hidden = false;
  }
}

function renderUsage(usage) {
  $("usage-unavailable").hidden = true;
  const day = (d) => DAY_ONLY.format(new Date(d + "T12:00:00"));
  $("usage-range").textContent = usage.from === usage.to ? day(usage.from) : day(usage.from) + " to " + day(usage.to);
  const body = $("usage-rows");
  body.textContent = "";
  for (const item of usage.items) {
    const tr = el("tr", item.amount_micros < 0 ? "debit" : "credit");
    tr.dataset.item = item.item;
    tr.append(el("th", "", item.name), el("td", "num", item.count.toLocaleString()), el("td", "num", money(item.amount_micros)));
    body.appendChild(tr);
  }
  if (!usage.items.length) {
    const tr = el("tr");
    const td = el("td", "muted", "Nothing in this range.");
    td.colSpan = 3;
    tr.appendChild(td);
    body.appendChild(tr);
  }
  $("usage-spent").textContent = money(usage.spent_micros);
  spendChart.show(usage.days, (micros) => money(micros));
  const legend = $("spend-legend");
  legend.textContent = "";
  for (const item of usage.items) {
    if (!ITEM_COLORS[item.item] || item.amount_micros >= 0) continue;
    const swatch = el("span", "swatch");
    swatch.style.background = ITEM_COLORS[item.item];
    legend.append(swatch, el("span", "", item.name + " "));
  }
  balanceChart.prepend(usage.days.map((d) => [dayEndMs(d.day), d.closing_balance_micros]));
}

function dayEndMs(day) {
  const [y, m, d] = day.split("-").map(Number);
  return Math.min(Date.now() - 1, new Date(y, m - 1, d + 1).getTime() - 1);
}

// ---- start ----------------------------------------------------------------------------

function reportBug(err) {
  // A bug in this page, not a refusal by the service: say so rather than hang.
  console.error(err);
  startAction();
  $("activity-error").textContent = "Something went wrong on this page. Reload it and try again.";
}

async function start() {
  const today = new Date();
  $("activity-to").value = localDay(today);
  $("activity-from").value = localDay(new Date(today.getFullYear(), today.getMonth(), today.getDate() - 29));
  $("time-zone").textContent = TIME_ZONE;
  if (!accountId || !token) {
    setStatus($("live-status"), "refused", "No account");
    refuse("Open this page with the link to your billing overview (it names your account and carries its access token).");
    return;
  }
  liveSocket(base + "/live", token, {
    onFrame(frame) {
      if (frame.type === "snapshot") applySnapshot(frame.account);
      else if (frame.type === "update" && frame.event === "account") applyAccountState(frame);
      else if (frame.type === "update") applyUpdate(frame);
    },
    onStatus(kind, text) { setStatus($("live-status"), kind, text); },
    onRefused(code, text) { refuse(text); },
  });
  state.served = await servedEndpoints();
  checkServed();
  if (!missing("POST", "/card/setup-intents")) mountCardElement();
  await Promise.all([loadActivity(false), loadUsage()]);
  scheduleUsageRefresh(); // entries of the last moment reach the ledger just after
  document.body.dataset.ready = "1"; // every part knows whether it is served
}

start();
