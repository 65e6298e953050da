// Shared by the dashboard and the ops page: the token, money in integer micros,
// API calls, and a live socket that reconnects. Plain JS, no build step.
"use strict";

const MICROS_PER_USD = 1000000;

// The page's token comes from its URL once (?token=...), then lives in
// sessionStorage (this tab only) and is removed from the address bar.
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

// Integer micros -> "$1,234.56", keeping sub-cent digits only when present
// ($0.0075). No floating point touches money.
function formatMicros(micros) {
  const negative = micros < 0;
  const abs = Math.abs(micros);
  const whole = Math.floor(abs / MICROS_PER_USD);
  let frac = String(abs % MICROS_PER_USD).padStart(6, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  const wholeText = whole.toLocaleString("en-US");
  return (negative ? "-$" : "$") + wholeText + "." + frac;
}

// "12.34" (dollars) -> 12340000 micros, exactly; null when not a plain amount.
function parseDollars(text) {
  const m = /^\s*\$?\s*(\d{1,9})(?:\.(\d{1,6}))?\s*$/.exec(text || "");
  if (!m) return null;
  return Number(m[1]) * MICROS_PER_USD + Number((m[2] || "").padEnd(6, "0"));
}

function dollarsInput(micros) {
  if (micros === null || micros === undefined) return "";
  return formatMicros(micros).replace(/[$,]/g, "");
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || "HTTP " + status);
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
  const response = await fetch(path, init);
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
  4401: "The token was refused (missing or invalid).",
  4403: "This token may not watch this account.",
  4404: "There is no such account.",
};

// A websocket that reconnects with backoff; onFrame gets parsed JSON frames.
function liveSocket(path, token, { onFrame, onStatus }) {
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
        return;
      }
      onStatus("offline", "Reconnecting…" + (event.reason ? " (" + event.reason + ")" : ""));
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
