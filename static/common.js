// Shared by the pages: the token, money in integer micros, dates in the reader's
// own time zone, API calls, and a live socket that reconnects. Plain JS, no build step.
"use strict";

const MICROS_PER_USD = 1000000;

// The page's parameters come from its URL once (?token=...), then live in
// sessionStorage (this tab only); the token is removed from the address bar.
function takeParams(names) {
  const url = new URL(window.location.href);
  const out = {};
  let changed = false;
  for (const name of names) {
    const fromUrl = url.searchParams.get(name);
    if (fromUrl) {
      sessionStorage.setItem("metering." + name, fromUrl);
      if (name === "token") { url.searchParams.delete(name); changed = true; }
    }
    out[name] = fromUrl || sessionStorage.getItem("metering." + name) || "";
  }
  if (changed) window.history.replaceState(null, "", url.pathname + url.search);
  return out;
}

// ---- money: integer micros, never floats -------------------------------------

// Decimal places an amount needs (2 to 6): $0.0075 needs 4, $12.50 needs 2.
function digitsNeeded(micros) {
  let frac = Math.abs(micros) % MICROS_PER_USD;
  if (frac === 0) return 2;
  let digits = 6;
  while (frac % 10 === 0) { frac /= 10; digits--; }
  return Math.max(2, digits);
}

// Integer micros -> "$1,234.5600" with at least `digits` decimal places (2 by
// default), more only when the amount itself has them: nothing is ever rounded.
function formatMicros(micros, digits) {
  const shown = Math.max(digits || 2, digitsNeeded(micros));
  const negative = micros < 0;
  const abs = Math.abs(micros);
  const whole = Math.floor(abs / MICROS_PER_USD);
  const frac = String(abs % MICROS_PER_USD).padStart(6, "0").slice(0, shown);
  return (negative ? "-$" : "$") + whole.toLocaleString("en-US") + "." + frac;
}

// "12.34" (dollars) -> 12340000 micros, exactly; null when not a plain amount.
function parseDollars(text) {
  const m = /^\s*\$?\s*(\d{1,3}(?:,\d{3})+|\d{1,9})(?:\.(\d{1,6}))?\s*$/.exec(text || "");
  if (!m) return null;
  return Number(m[1].replace(/,/g, "")) * MICROS_PER_USD + Number((m[2] || "").padEnd(6, "0"));
}

// Whole cents for an input box: 75000000 -> "75.00".
function dollarsInput(micros) {
  if (micros === null || micros === undefined) return "";
  return formatMicros(micros, 2).replace(/[$,]/g, "");
}

// ---- time: the reader's own zone, always named -----------------------------

const TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const DATE_TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric",
  hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
});
const TIME_ONLY = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", timeZoneName: "short",
});
const DAY_ONLY = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

function formatWhen(atUs) { return DATE_TIME.format(new Date(Math.floor(atUs / 1000))); }
function formatTime(atUs) { return TIME_ONLY.format(new Date(Math.floor(atUs / 1000))); }

// A <input type=date> value ("2026-11-25") as the instant its local day starts
// (or ends, inclusive), in RFC 3339 (UTC), for the activity API.
function localDayInstant(day, endOfDay) {
  const [y, m, d] = day.split("-").map(Number);
  const start = new Date(y, m - 1, d);
  if (!endOfDay) return start.toISOString();
  return new Date(new Date(y, m - 1, d + 1).getTime() - 1).toISOString();
}

function localDay(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate());
}

// ---- API --------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || "The service answered " + status + ".");
    this.status = status;
    this.body = body || {};
  }
}

async function api(token, method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { error: "network", message: "The service could not be reached. Check your connection and try again." });
  }
  let parsed = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("application/json")) parsed = await response.json();
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

// Which endpoints this gateway serves, from its OpenAPI document: parts of a
// page whose endpoint is missing are shown disabled instead of failing.
async function servedEndpoints() {
  try {
    const doc = await (await fetch("/openapi.json")).json();
    const served = new Set();
    for (const [path, ops] of Object.entries(doc.paths || {})) {
      for (const method of Object.keys(ops)) served.add(method.toUpperCase() + " " + path);
    }
    return served;
  } catch (e) {
    return new Set();
  }
}

// Close codes after which reconnecting cannot help (gateway/live_hub.py).
const FINAL_CLOSE_CODES = {
  4401: "This link is not valid (the access token was refused).",
  4403: "This link may not show this account.",
  4404: "There is no such account.",
};

// A websocket that reconnects with backoff; onFrame gets parsed JSON frames,
// onRefused(code, text) is called once when reconnecting cannot help.
function liveSocket(path, token, { onFrame, onStatus, onRefused }) {
  let delayMs = 500;
  let socket = null;
  let stopped = false;
  function open() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + path +
      "?token=" + encodeURIComponent(token));
    onStatus("connecting", "Connecting…");
    socket.onopen = () => { delayMs = 500; onStatus("live", "Live"); };
    socket.onmessage = (event) => onFrame(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (stopped) return;
      if (FINAL_CLOSE_CODES[event.code]) {
        onStatus("refused", FINAL_CLOSE_CODES[event.code]);
        if (onRefused) onRefused(event.code, FINAL_CLOSE_CODES[event.code]);
        return;
      }
      onStatus("offline", "Reconnecting…");
      setTimeout(open, delayMs);
      delayMs = Math.min(delayMs * 2, 10000);
    };
  }
  open();
  return { stop() { stopped = true; if (socket) socket.close(); } };
}

function $(id) { return document.getElementById(id); }

function setStatus(el, state, text) {
  el.textContent = text;
  el.className = "status status-" + state;
}

// A DOM element with text (never HTML): el("td", "num", "$1.00").
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}
