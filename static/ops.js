// The operations page: every account's live balance in one sortable table.
// Thousands of rows stay smooth: frames only mark rows dirty, and one
// requestAnimationFrame pass writes the changed cells; rows are re-ordered at
// most once a second, never re-rendered as a whole.
"use strict";

const BURN_WINDOW_MS = 5 * 60 * 1000;
const BURN_SPAN_MIN_MS = 10 * 1000; // don't extrapolate a minute from a blink
const RESORT_EVERY_MS = 1000;
const BURN_REFRESH_MS = 2000;

const params = takeParams(["token"]);
const token = params.token;
const rows = new Map(); // account_id -> row
const dirty = new Set();
let order = []; // rows in display order
let sortKey = "available_micros", sortDir = 1;
let needResort = true, lastResort = 0, flushQueued = false, resortTimer = 0;
let nearLimitMicros = 5 * MICROS_PER_USD;
// Exposed for the browser test and for curious operators (console: opsStats).
const stats = { flushes: 0, flushMsMax: 0, frames: 0 };
window.opsStats = stats;

function newRow(accountId) {
  const tr = document.createElement("tr");
  tr.dataset.account = accountId;
  const cells = [];
  for (let i = 0; i < 8; i++) {
    const td = document.createElement("td");
    if (i >= 1 && i <= 5) td.className = "num";
    tr.appendChild(td);
    cells.push(td);
  }
  cells[0].textContent = accountId;
  const row = {
    account_id: accountId, tr, cells, balance_micros: 0, reserved_micros: 0,
    available_micros: 0, open_calls: 0, recharge: {}, changed: 0, burn: 0,
    samples: [], shown: [], seq: -1,
  };
  rows.set(accountId, row);
  order.push(row);
  $("ops-rows").appendChild(tr);
  return row;
}

function absorb(data, isSnapshot) {
  let row = rows.get(data.account_id);
  if (!row) row = newRow(data.account_id);
  if (data.seq !== undefined && data.seq < row.seq) return;
  row.seq = data.seq === undefined ? row.seq : data.seq;
  row.balance_micros = data.balance_micros;
  row.reserved_micros = data.reserved_micros;
  row.available_micros = data.available_micros;
  if (data.open_calls !== undefined) row.open_calls = data.open_calls;
  if (data.recharge) row.recharge = data.recharge;
  if (data.recharge_pending !== undefined) row.recharge = Object.assign({}, row.recharge, { pending: data.recharge_pending });
  if (!isSnapshot) row.changed = Math.floor(data.at_us / 1000);
  if (data.spent_micros !== undefined) addSample(row, data.spent_micros);
  dirty.add(row);
}

// Burn rate from the gateway's running spend counter: robust to coalesced frames.
function addSample(row, spent) {
  const now = Date.now();
  row.samples.push([now, spent]);
  while (row.samples.length > 2 && row.samples[1][0] < now - BURN_WINDOW_MS) row.samples.shift();
  if (row.samples.length > 600) row.samples.splice(1, row.samples.length - 600);
}

function burnRate(row, now) {
  const s = row.samples;
  if (s.length < 2) return 0;
  const startAt = Math.max(s[0][0], now - BURN_WINDOW_MS);
  const span = Math.max(now - startAt, BURN_SPAN_MIN_MS);
  return Math.round((s[s.length - 1][1] - s[0][1]) * 60000 / span);
}

function rechargeBadge(r) {
  if (r.last_failure) return ["failed", "Failed: " + r.last_failure, 3];
  if (r.pending) return ["pending", "Pending", 2];
  if (r.enabled) return ["on", "On", 1];
  return ["", "Off", 0];
}

function set(row, i, text) {
  if (row.shown[i] !== text) { row.cells[i].textContent = text; row.shown[i] = text; }
}

function render(row) {
  set(row, 1, formatMicros(row.balance_micros));
  set(row, 2, formatMicros(row.reserved_micros));
  set(row, 3, formatMicros(row.available_micros));
  set(row, 4, formatMicros(row.burn));
  set(row, 5, String(row.open_calls));
  const [kind, text] = rechargeBadge(row.recharge);
  if (row.shown[6] !== text) {
    row.cells[6].innerHTML = kind ? "<span class='badge badge-" + kind + "'></span>" : "";
    if (kind) row.cells[6].firstChild.textContent = text; else row.cells[6].textContent = text;
    row.shown[6] = text;
  }
  set(row, 7, row.changed ? new Date(row.changed).toLocaleTimeString() : "");
  row.cells[3].dataset.micros = String(row.available_micros);
  const threshold = row.recharge.threshold_micros || nearLimitMicros;
  row.tr.classList.toggle("at-zero", row.available_micros <= 0);
  row.tr.classList.toggle("near-zero", row.available_micros > 0 && row.available_micros < threshold);
  row.tr.hidden = !visible(row);
}

function visible(row) {
  const text = $("filter-text").value.trim();
  if (text && !row.account_id.includes(text)) return false;
  if ($("filter-near").checked) {
    const threshold = row.recharge.threshold_micros || nearLimitMicros;
    if (row.available_micros >= threshold) return false;
  }
  if ($("filter-recharge").checked && !(row.recharge.pending || row.recharge.last_failure)) return false;
  return true;
}

function sortValue(row) {
  if (sortKey === "recharge") return rechargeBadge(row.recharge)[2];
  return row[sortKey];
}

function resort() {
  order.sort((a, b) => {
    const x = sortValue(a), y = sortValue(b);
    if (x < y) return -sortDir;
    if (x > y) return sortDir;
    return a.account_id < b.account_id ? -1 : 1;
  });
  const body = $("ops-rows");
  const fragment = document.createDocumentFragment();
  for (const row of order) fragment.appendChild(row.tr);
  body.appendChild(fragment);
  needResort = false;
  lastResort = performance.now();
}

function summarize() {
  let zero = 0, near = 0, failed = 0, pending = 0, burn = 0;
  for (const row of order) {
    const threshold = row.recharge.threshold_micros || nearLimitMicros;
    if (row.available_micros <= 0) zero++;
    else if (row.available_micros < threshold) near++;
    if (row.recharge.last_failure) failed++;
    else if (row.recharge.pending) pending++;
    burn += row.burn;
  }
  $("sum-accounts").textContent = String(order.length);
  $("sum-zero").textContent = String(zero);
  $("sum-near").textContent = String(near);
  $("sum-failed").textContent = String(failed);
  $("sum-pending").textContent = String(pending);
  $("sum-burn").textContent = formatMicros(burn);
}

function scheduleFlush() {
  if (flushQueued) return;
  flushQueued = true;
  requestAnimationFrame(flush);
}

function flush() {
  flushQueued = false;
  const began = performance.now();
  const now = Date.now();
  for (const row of dirty) {
    row.burn = burnRate(row, now);
    render(row);
  }
  if (dirty.size && sortKey !== "account_id") needResort = true;
  dirty.clear();
  if (needResort) {
    const wait = RESORT_EVERY_MS - (performance.now() - lastResort);
    if (wait <= 0) resort();
    else if (!resortTimer) resortTimer = setTimeout(() => { resortTimer = 0; scheduleFlush(); }, wait);
  }
  summarize();
  stats.flushes++;
  stats.flushMsMax = Math.max(stats.flushMsMax, performance.now() - began);
}

function markAll() { for (const row of order) dirty.add(row); scheduleFlush(); }

// Burn rates fall as the window slides even when nothing arrives.
setInterval(() => {
  const now = Date.now();
  for (const row of order) {
    const burn = burnRate(row, now);
    if (burn !== row.burn) { row.burn = burn; dirty.add(row); }
  }
  if (dirty.size) scheduleFlush();
}, BURN_REFRESH_MS);

for (const th of document.querySelectorAll("#ops-table th")) {
  th.addEventListener("click", () => {
    const key = th.dataset.sort;
    sortDir = key === sortKey ? -sortDir : (key === "burn" || key === "changed" ? -1 : 1);
    sortKey = key;
    for (const other of document.querySelectorAll("#ops-table th")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", sortDir === 1 ? "ascending" : "descending");
    needResort = true;
    lastResort = 0;
    scheduleFlush();
  });
}
for (const id of ["filter-text", "filter-near", "filter-recharge"]) $(id).addEventListener("input", markAll);
$("near-limit").addEventListener("input", () => {
  const micros = parseDollars($("near-limit").value);
  if (micros !== null) { nearLimitMicros = micros; markAll(); }
});
$("burn-window").textContent = String(BURN_WINDOW_MS / 60000);

if (!token) {
  setStatus($("live-status"), "refused", "Open this page as /ops?token=<ops token>.");
} else {
  liveSocket("/v1/ops/live", token, {
    onFrame(frame) {
      stats.frames++;
      if (frame.type === "snapshot") {
        // A new connection may reach another gateway process, whose spend
        // counter started elsewhere: burn samples restart.
        if (frame.first && !frame.refresh) for (const row of order) { row.samples = []; row.seq = -1; }
        for (const account of frame.accounts) absorb(account, true);
      } else if (frame.type === "updates") {
        for (const change of frame.updates) absorb(change, false);
      }
      scheduleFlush();
    },
    onStatus(kind, text) { setStatus($("live-status"), kind, text); },
  });
}
