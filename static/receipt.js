// A receipt: one card payment (pay now or automatic recharge), or one failed
// automatic recharge attempt, as a record to keep or print. Opened from a
// receipt link (its signature stands in for a token) or from the dashboard.
"use strict";

const BALANCE_RETRY_MS = 1000; // the balance after is in the ledger a moment after the payment

(async () => {
  const url = new URL(window.location.href);
  const account = url.searchParams.get("account") || "";
  const which = url.searchParams.has("payment") ? "payment" : "attempt";
  const q = new URLSearchParams({ [which]: url.searchParams.get(which) || "" });
  const signature = url.searchParams.get("signature");
  if (signature) q.set("signature", signature);
  const token = signature ? "" : sessionStorage.getItem("metering.token") || "";
  const path = "/v1/accounts/" + encodeURIComponent(account) + "/receipt?" + q.toString();

  async function fetchReceipt() {
    const init = token ? { headers: { Authorization: "Bearer " + token } } : {};
    const response = await fetch(path, init);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function show(r) {
    const failed = r.status === "failed";
    const recharge = r.kind === "automatic_recharge";
    $("receipt-title").textContent = failed
      ? (recharge ? "Automatic recharge declined" : "Payment declined")
      : r.status === "pending" ? "Payment in progress" : "Receipt";
    $("receipt-sub").textContent = (recharge ? "Automatic recharge" : "Payment") + " for account " + r.account_id;
    $("receipt-amount").textContent = formatMicros(r.amount_micros, 2) + " " + r.currency.toUpperCase();
    const card = r.card ? r.card.brand.charAt(0).toUpperCase() + r.card.brand.slice(1) + " ending in " + r.card.last4 : "Card";
    const items = [
      ["Date", formatWhen(r.at_us)],
      [failed ? "Card" : "Charged to", card],
      ["Balance after", failed ? "unchanged" : r.balance_after_micros === null ? "being recorded…" : formatMicros(r.balance_after_micros)],
      ["Payment id", r.payment_id],
      ["Stripe reference", r.payment_intent_id],
      ["Account", r.account_id],
    ];
    const list = $("receipt-list");
    list.textContent = "";
    for (const [term, value] of items) {
      if (!value) continue;
      list.append(el("dt", "", term), el("dd", "", value));
    }
    $("receipt-failure").hidden = !failed;
    $("receipt-failure").textContent = failed ? (r.failure || "The card was declined.") + " Nothing was charged." : "";
    $("receipt-print").hidden = false;
    document.body.dataset.ready = "1";
    if (!failed && r.balance_after_micros === null) setTimeout(load, BALANCE_RETRY_MS);
  }

  async function load() {
    try {
      show(await fetchReceipt());
    } catch (err) {
      $("receipt-title").textContent = "Receipt not available";
      $("receipt-sub").textContent = err.status === 401 || err.status === 403
        ? "This receipt link is not valid. Open the receipt from your billing overview."
        : err.status === 404 ? "There is no such payment on this account." : "The receipt could not be loaded; try again in a moment.";
      document.body.dataset.ready = "1";
    }
  }

  $("receipt-print").addEventListener("click", () => window.print());
  load();
})();
