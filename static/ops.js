// The operations page: every account's live balance in one sortable table.
// Thousands of rows stay smooth: frames only update data and mark it dirty;
// one requestAnimationFrame pass paints. The table is virtual: only the rows
// in view exist in the DOM (a fixed pool), so the page's cost does not grow
// with the number of accounts, and rows are re-ordered at most once a second.
// Burn rates come from the server (metering/burn.py), never from what this
// page happened to see.
"use strict";

const RESORT_EVERY_MS = 1000;
// Every amount with four decimals (sub-cent prices are common), so columns line
// up; an amount that has more shows them all.
const OPS_DIGITS = 4;
const money = (micros) => formatMicros(micros, OPS_DIGITS);
const ROW_HEIGHT_PX = 28; // matches .ops-table td in style.css
const OVERSCAN_ROWS = 10;
// Cells hidden on a phone carry these classes (style.css).
const CELL_CLASSES = ["", "num", "num c-reserved", "num", "num", "num c-calls", "c-recharge", "c-changed"];

const params = takeParams(["token"]);
const token = params.token;
const rows = new Map(); // account_id -> row data
let order = []; // every row, sorted
let view = []; // the rows passing the filters, in order
let sortKey = "available_micros", sortDir = 1;
let needResort = true, lastResort = 0, resortTimer = 0;
let flushQueued = false, anyDirty = false, paintAll = true;
let nearLimitMicros = 5 * MICROS_PER_USD;
let selected = null; // the row shown in the detail panel
let burnWindowS = 300;
const pool = []; // the <tr>s in the DOM: {tr, cells, row, version, shown}
// Exposed for the browser test and for curious operators (console: opsStats).
const stats = { flushes: 0, flushMsMax: 0, frames: 0, updates: 0 };
window.opsStats = stats;

function newRow(accountId) {
  return { account_id: accountId, balance_micros: 0, reserved_micros: 0, available_micros: 0,
    open_calls: 0, recharge: {}, card: undefined, changed: 0, burn: 0, seq: -1, version: 0 };
}

function absorb(data, isSnapshot) {
  let row = rows.get(data.account_id);
  if (!row) {
    row = newRow(data.account_id);
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
    if (data.recharge_pending !== undefined) {
      row.recharge = Object.assign({}, row.recharge, {
        pending: data.recharge_pending,
        pending_since_us: data.recharge_pending ? data.recharge_pending_since_us || row.recharge.pending_since_us : null,
      });
    }
  }
  if (data.open_calls !== undefined) row.open_calls = data.open_calls;
  // A snapshot row or an "account" frame carries the whole recharge state.
  if (data.recharge) row.recharge = data.recharge;
  if (data.card !== undefined) row.card = data.card;
  if (data.burn_micros_per_minute !== undefined) row.burn = data.burn_micros_per_minute;
  if (!isSnapshot && data.at_us) row.changed = Math.floor(data.at_us / 1000);
  row.version++;
  anyDirty = true;
}

// A "burn" frame: every account's rate (those absent spent nothing).
function absorbBurn(frame) {
  burnWindowS = frame.window_s;
  for (const row of order) {
    const burn = frame.rates[row.account_id] || 0;
    if (burn !== row.burn) { row.burn = burn; row.version++; anyDirty = true; }
  }
}

// ---- recharge state in words ---------------------------------------------------

// [kind, short badge text, sort rank, full sentence]
function rechargeState(r) {
  const failure = r.last_failure
    ? "Failed" + (r.last_failure_at_us ? " at " + formatTime(r.last_failure_at_us) : "") + ": " + r.last_failure
    : "";
  if (r.pending && failure) {
    const next = r.next_attempt_at_us ? " Next try at " + formatTime(r.next_attempt_at_us) + "." : "";
    return ["failed", "Failed", 4, failure + next];
  }
  if (r.pending) {
    const since = r.pending_since_us ? " since " + formatTime(r.pending_since_us) : "";
    return ["pending", "Pending", 3, "A recharge is pending" + since + "."];
  }
  if (r.enabled && failure) return ["failed", "Failed", 4, failure + " Gave up until the next low balance."];
  if (r.enabled) return ["on", "On", 2, "On: " + formatMicros(r.amount_micros || 0) +
    " when available falls below " + formatMicros(r.threshold_micros || 0) + "."];
  return ["", "Off", 1, "Automatic recharge is off." + (failure ? " Last failure: " + failure : "")];
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
  if (sortKey === "recharge") return rechargeState(row.recharge)[2];
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
    const td = el("td", CELL_CLASSES[i]);
    tr.appendChild(td);
    cells.push(td);
  }
  const slot = { tr, cells, row: null, version: -1, shown: [] };
  tr.addEventListener("click", () => { if (slot.row) select(slot.row); });
  return slot;
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
  setCell(slot, 1, money(row.balance_micros));
  setCell(slot, 2, money(row.reserved_micros));
  setCell(slot, 3, money(row.available_micros));
  setCell(slot, 4, money(row.burn));
  setCell(slot, 5, String(row.open_calls));
  const [kind, text, , sentence] = rechargeState(row.recharge);
  const badgeKey = text + "|" + sentence;
  if (slot.shown[6] !== badgeKey) {
    slot.cells[6].textContent = "";
    const badge = el("span", kind ? "badge badge-" + kind : "badge", text);
    slot.cells[6].appendChild(badge);
    slot.cells[6].title = sentence; // the full reason on hover
    slot.shown[6] = badgeKey;
  }
  setCell(slot, 7, row.changed ? formatTime(row.changed * 1000) : "");
  slot.cells[3].dataset.micros = String(row.available_micros);
  slot.cells[4].dataset.micros = String(row.burn);
  slot.tr.classList.toggle("at-zero", row.available_micros <= 0);
  slot.tr.classList.toggle("near-zero", row.available_micros > 0 && row.available_micros < thresholdOf(row));
  slot.tr.classList.toggle("selected", row === selected);
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
  // An empty view says so, and how to get rows back.
  $("ops-empty").hidden = !(view.length === 0 && order.length > 0);
  paintAll = false;
}

function summarize() {
  let zero = 0, near = 0, failed = 0, pending = 0, burn = 0;
  for (const row of order) {
    if (row.available_micros <= 0) zero++;
    else if (row.available_micros < thresholdOf(row)) near++;
    const kind = rechargeState(row.recharge)[0];
    if (kind === "failed") failed++;
    else if (kind === "pending") pending++;
    burn += row.burn;
  }
  $("sum-accounts").textContent = String(order.length);
  $("sum-zero").textContent = String(zero);
  $("sum-near").textContent = String(near);
  $("sum-failed").textContent = String(failed);
  $("sum-pending").textContent = String(pending);
  $("sum-burn").textContent = money(burn);
  $("sum-shown").textContent = view.length === order.length ? "" : view.length + " shown";
  const minutes = burnWindowS / 60;
  $("burn-window").textContent = Number.isInteger(minutes) ? minutes + " minutes" : burnWindowS + " seconds";
}

// ---- the detail panel: everything about one account, live -------------------

function select(row) {
  selected = row;
  $("detail").hidden = false;
  document.body.classList.add("detail-open");
  paintAll = true;
  showDetail();
  scheduleFlush();
}

function showDetail() {
  if (!selected) return;
  const row = selected;
  const r = row.recharge;
  const [, , , sentence] = rechargeState(r);
  const card = row.card === undefined ? "" : row.card
    ? row.card.brand.charAt(0).toUpperCase() + row.card.brand.slice(1) + " ending in " + row.card.last4 + ", expires " +
      String(row.card.exp_month).padStart(2, "0") + "/" + row.card.exp_year
    : "No card on file";
  const items = [
    ["Balance", money(row.balance_micros)],
    ["Reserved for calls", money(row.reserved_micros)],
    ["Available", money(row.available_micros)],
    ["Burn rate", money(row.burn) + " per minute"],
    ["Open calls", String(row.open_calls)],
    ["Automatic recharge", r.enabled ? formatMicros(r.amount_micros || 0) + " when available falls below " +
      formatMicros(r.threshold_micros || 0) : "Off"],
    ["Recharge state", sentence],
    ["Failure email", r.failure_email || "none"],
    ["Card", card],
    ["Last change", row.changed ? formatWhen(row.changed * 1000) : "none since this page opened"],
  ];
  $("detail-title").textContent = row.account_id;
  const list = $("detail-list");
  list.textContent = "";
  for (const [term, value] of items) {
    if (!value) continue;
    list.appendChild(el("dt", "", term));
    list.appendChild(el("dd", "", value));
  }
}

$("detail-close").addEventListener("click", () => {
  selected = null;
  $("detail").hidden = true;
  document.body.classList.remove("detail-open");
  paintAll = true;
  scheduleFlush();
});

// ---- frames to paint ------------------------------------------------------------

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
  if (anyDirty && selected) showDetail();
  anyDirty = false;
  stats.flushes++;
  stats.flushMsMax = Math.max(stats.flushMsMax, performance.now() - began);
}

function refilter() { needResort = true; lastResort = 0; paintAll = true; scheduleFlush(); }

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
$("filters-clear").addEventListener("click", () => {
  $("filter-text").value = "";
  $("filter-near").checked = false;
  $("filter-recharge").checked = false;
  refilter();
});
$("ops-scroll").addEventListener("scroll", () => { paintAll = true; scheduleFlush(); }, { passive: true });
window.addEventListener("resize", scheduleFlush);

if (!token) {
  setStatus($("live-status"), "refused", "Open this page as /ops?token=<ops token>.");
} else {
  liveSocket("/v1/ops/live", token, {
    onFrame(frame) {
      stats.frames++;
      if (frame.type === "snapshot") {
        if (frame.first && !frame.refresh) for (const row of order) row.seq = -1;
        for (const account of frame.accounts) absorb(account, true);
      } else if (frame.type === "updates") {
        stats.updates += frame.updates.length;
        for (const change of frame.updates) absorb(change, false);
      } else if (frame.type === "burn") {
        absorbBurn(frame);
      }
      scheduleFlush();
    },
    onStatus(kind, text) { setStatus($("live-status"), kind, text); },
  });
}
