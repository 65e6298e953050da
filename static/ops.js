// The operations page: every account's live balance in one sortable table.
// Thousands of rows stay smooth: frames only update data and mark it dirty;
// one requestAnimationFrame pass paints. The table is virtual: only the rows
// in view exist in the DOM (a fixed pool), so the page's cost does not grow
// with the number of accounts, and rows are re-ordered at most once a second.
"use strict";

const BURN_WINDOW_MS = 5 * 60 * 1000;
const BURN_SPAN_MIN_MS = 10 * 1000; // don't extrapolate a minute from a blink
const RESORT_EVERY_MS = 1000;
const BURN_REFRESH_MS = 2000;
const ROW_HEIGHT_PX = 28; // matches .ops-table td in style.css
const OVERSCAN_ROWS = 10;

const params = takeParams(["token"]);
const token = params.token;
const rows = new Map(); // account_id -> row data
let order = []; // every row, sorted
let view = []; // the rows passing the filters, in order
let sortKey = "available_micros", sortDir = 1;
let needResort = true, lastResort = 0, resortTimer = 0;
let flushQueued = false, anyDirty = false, paintAll = true;
let nearLimitMicros = 5 * MICROS_PER_USD;
const pool = []; // the <tr>s in the DOM: {tr, cells, row, version, shown}
// Exposed for the browser test and for curious operators (console: opsStats).
const stats = { flushes: 0, flushMsMax: 0, frames: 0, updates: 0 };
window.opsStats = stats;

function absorb(data, isSnapshot) {
  let row = rows.get(data.account_id);
  if (!row) {
    row = { account_id: data.account_id, balance_micros: 0, reserved_micros: 0, available_micros: 0,
      open_calls: 0, recharge: {}, changed: 0, burn: 0, samples: [], seq: -1, version: 0 };
    rows.set(data.account_id, row);
    order.push(row);
    needResort = true;
  }
  if (data.balance_micros !== undefined) {
    if (data.seq !== undefined && data.seq < row.seq) return;
    if (data.seq !== undefined) row.seq = data.seq;
    row.balance_micros = data.balance_micros;
    row.reserved_micros = data.reserved_micros;
    row.available_micros = data.available_micros;
  }
  if (data.open_calls !== undefined) row.open_calls = data.open_calls;
  if (data.recharge) row.recharge = data.recharge;
  if (data.recharge_pending !== undefined) {
    row.recharge = Object.assign({}, row.recharge, { pending: data.recharge_pending });
  }
  if (data.recharge_last_failure !== undefined) {
    row.recharge = Object.assign({}, row.recharge, { last_failure: data.recharge_last_failure });
  }
  if (!isSnapshot && data.at_us) row.changed = Math.floor(data.at_us / 1000);
  if (data.spent_micros !== undefined) addSample(row, data.spent_micros);
  row.burn = burnRate(row, Date.now());
  row.version++;
  anyDirty = true;
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

function thresholdOf(row) { return row.recharge.threshold_micros || nearLimitMicros; }

function visible(row) {
  const text = $("filter-text").value.trim();
  if (text && !row.account_id.includes(text)) return false;
  if ($("filter-near").checked && row.available_micros >= thresholdOf(row)) return false;
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
  view = order.filter(visible);
  needResort = false;
  paintAll = true;
  lastResort = performance.now();
}

// ---- painting: a pool of <tr>s bound to the rows in view ---------------------

function poolRow() {
  const tr = document.createElement("tr");
  const cells = [];
  for (let i = 0; i < 8; i++) {
    const td = document.createElement("td");
    if (i >= 1 && i <= 5) td.className = "num";
    tr.appendChild(td);
    cells.push(td);
  }
  return { tr, cells, row: null, version: -1, shown: [] };
}

function setCell(slot, i, text) {
  if (slot.shown[i] !== text) { slot.cells[i].textContent = text; slot.shown[i] = text; }
}

function bind(slot, row) {
  if (slot.row === row && slot.version === row.version && !paintAll) return;
  slot.row = row;
  slot.version = row.version;
  slot.tr.hidden = false;
  slot.tr.dataset.account = row.account_id;
  setCell(slot, 0, row.account_id);
  setCell(slot, 1, formatMicros(row.balance_micros));
  setCell(slot, 2, formatMicros(row.reserved_micros));
  setCell(slot, 3, formatMicros(row.available_micros));
  setCell(slot, 4, formatMicros(row.burn));
  setCell(slot, 5, String(row.open_calls));
  const [kind, text] = rechargeBadge(row.recharge);
  if (slot.shown[6] !== text) {
    slot.cells[6].textContent = "";
    const badge = document.createElement("span");
    badge.className = kind ? "badge badge-" + kind : "";
    badge.textContent = text;
    slot.cells[6].appendChild(badge);
    slot.shown[6] = text;
  }
  setCell(slot, 7, row.changed ? new Date(row.changed).toLocaleTimeString() : "");
  slot.cells[3].dataset.micros = String(row.available_micros);
  slot.tr.classList.toggle("at-zero", row.available_micros <= 0);
  slot.tr.classList.toggle("near-zero", row.available_micros > 0 && row.available_micros < thresholdOf(row));
}

function paint() {
  const scroller = $("ops-scroll");
  const inView = Math.ceil(scroller.clientHeight / ROW_HEIGHT_PX) + 2 * OVERSCAN_ROWS;
  while (pool.length < inView) {
    const slot = poolRow();
    pool.push(slot);
    $("ops-rows").appendChild(slot.tr);
  }
  const first = Math.max(0, Math.floor(scroller.scrollTop / ROW_HEIGHT_PX) - OVERSCAN_ROWS);
  $("pad-top").style.height = first * ROW_HEIGHT_PX + "px";
  let shown = 0;
  for (let i = 0; i < pool.length; i++) {
    const row = view[first + i];
    if (row) { bind(pool[i], row); shown++; } else if (!pool[i].tr.hidden) { pool[i].tr.hidden = true; pool[i].row = null; }
  }
  $("pad-bottom").style.height = Math.max(0, view.length - first - shown) * ROW_HEIGHT_PX + "px";
  paintAll = false;
}

function summarize() {
  let zero = 0, near = 0, failed = 0, pending = 0, burn = 0;
  for (const row of order) {
    if (row.available_micros <= 0) zero++;
    else if (row.available_micros < thresholdOf(row)) near++;
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
  $("sum-shown").textContent = view.length === order.length ? "" : view.length + " shown";
}

function scheduleFlush() {
  if (flushQueued) return;
  flushQueued = true;
  requestAnimationFrame(flush);
}

function flush() {
  flushQueued = false;
  const began = performance.now();
  if (anyDirty && sortKey !== "account_id") needResort = true;
  if (needResort) {
    const wait = RESORT_EVERY_MS - (began - lastResort);
    if (wait <= 0) resort();
    else if (!resortTimer) resortTimer = setTimeout(() => { resortTimer = 0; scheduleFlush(); }, wait);
  }
  // paint() clears paintAll: remember it, so a re-sort (which changes the view)
  // also refreshes the "N shown" count.
  const repaintedAll = paintAll;
  paint();
  if (anyDirty || repaintedAll) summarize();
  anyDirty = false;
  stats.flushes++;
  stats.flushMsMax = Math.max(stats.flushMsMax, performance.now() - began);
}

function refilter() { needResort = true; lastResort = 0; paintAll = true; scheduleFlush(); }

// Burn rates fall as the window slides even when nothing arrives.
setInterval(() => {
  const now = Date.now();
  for (const row of order) {
    const burn = burnRate(row, now);
    if (burn !== row.burn) { row.burn = burn; row.version++; anyDirty = true; }
  }
  if (anyDirty) scheduleFlush();
}, BURN_REFRESH_MS);

for (const th of document.querySelectorAll("#ops-table th")) {
  th.addEventListener("click", () => {
    const key = th.dataset.sort;
    sortDir = key === sortKey ? -sortDir : (key === "burn" || key === "changed" ? -1 : 1);
    sortKey = key;
    for (const other of document.querySelectorAll("#ops-table th")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", sortDir === 1 ? "ascending" : "descending");
    refilter();
  });
}
for (const id of ["filter-text", "filter-near", "filter-recharge"]) $(id).addEventListener("input", refilter);
$("near-limit").addEventListener("input", () => {
  const micros = parseDollars($("near-limit").value);
  if (micros !== null) { nearLimitMicros = micros; refilter(); }
});
$("ops-scroll").addEventListener("scroll", () => { paintAll = true; scheduleFlush(); }, { passive: true });
window.addEventListener("resize", scheduleFlush);
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
        stats.updates += frame.updates.length;
        for (const change of frame.updates) absorb(change, false);
      }
      scheduleFlush();
    },
    onStatus(kind, text) { setStatus($("live-status"), kind, text); },
  });
}
