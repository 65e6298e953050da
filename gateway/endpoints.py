"""Every HTTP endpoint once: path, method, handler, who may call it, its body
and its answer (msgspec Structs). The router and the OpenAPI document are both
built from this table."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway import (
    accounts_api,
    activity_api,
    answers,
    notify_api,
    numbers_api,
    ops_api,
    pages,
    payments_api,
    switch_api,
)

Handler = Callable[[Request], Awaitable[Response]]


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    roles: tuple[str, ...]
    summary: str
    body: type[msgspec.Struct] | None = None
    success: int = 200
    errors: tuple[int, ...] = (400, 401, 403, 404, 409, 422)
    # Query parameters: name -> description (all optional strings).
    query: tuple[tuple[str, str], ...] = ()
    # The success answer's declaration (None: an object not described yet).
    answer: type[msgspec.Struct] | None = None


ACTIVITY_QUERY = (
    ("from", "First day (YYYY-MM-DD, UTC, inclusive) or an RFC 3339 instant."),
    ("to", "Last day (YYYY-MM-DD, UTC, inclusive) or an RFC 3339 instant."),
    ("show", "all (default), debits or credits."),
    ("limit", "Entries per page, at most METERING_ACTIVITY_PAGE_MAX."),
    ("cursor", "next_cursor of the previous page."),
)
CHARGE_ERRORS = (400, 401, 402, 403, 404, 409, 422, 503)

ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/v1/accounts",
        accounts_api.post_account,
        ("ops",),
        "Create an account with its rate card (zero balance).",
        accounts_api.CreateAccountRequest,
        answer=answers.AccountAnswer,
        success=201,
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}",
        accounts_api.get_account,
        ("customer", "ops", "switch"),
        "Balance, reserved, available, rate card, recharge settings, card on file.",
        answer=answers.AccountAnswer,
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/tokens",
        accounts_api.post_token,
        ("ops",),
        "Issue a customer token for the account's dashboard (shown once).",
        accounts_api.TokenRequest,
        answer=answers.TokenIssued,
        success=201,
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/tokens",
        accounts_api.get_tokens,
        ("ops",),
        "The account's customer tokens on record (id, label, when issued and revoked).",
        answer=answers.TokenList,
        errors=(401, 403, 404, 503),
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/tokens/{token_id}",
        accounts_api.delete_token,
        ("ops",),
        "Revoke a customer token: refused at once, its live sockets closed (4401).",
        answer=answers.TokenRecord,
        errors=(401, 403, 404, 422, 503),
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/credits",
        accounts_api.post_credit,
        ("ops",),
        "Add funds (idempotent by credit_id).",
        accounts_api.CreditRequest,
        answer=answers.FundsAdded,
    ),
    Endpoint(
        "POST",
        "/v1/messages",
        switch_api.post_message,
        ("switch",),
        "Charge an outgoing or incoming text message, or refuse with 402.",
        switch_api.MessageRequest,
        answer=answers.MessageCharged,
        errors=CHARGE_ERRORS,
    ),
    Endpoint(
        "POST",
        "/v1/ring-through-attempts",
        switch_api.post_ring_through_attempt,
        ("switch",),
        "Charge a ring-through connection attempt, or refuse with 402.",
        switch_api.AttemptRequest,
        answer=answers.AttemptCharged,
        errors=CHARGE_ERRORS,
    ),
    Endpoint(
        "POST",
        "/v1/numbers/purchases",
        switch_api.post_number_purchase,
        ("switch",),
        "Charge a phone number purchase, or refuse with 402.",
        switch_api.PurchaseRequest,
        answer=answers.PurchaseCharged,
        errors=CHARGE_ERRORS,
    ),
    Endpoint(
        "POST",
        "/v1/numbers/renewals",
        switch_api.post_number_renewal,
        ("switch",),
        "Charge a phone number renewal, or refuse with 402.",
        switch_api.RenewalRequest,
        answer=answers.RenewalCharged,
        errors=CHARGE_ERRORS,
    ),
    Endpoint(
        "POST",
        "/v1/debit-batches",
        switch_api.post_debit_batch,
        ("switch",),
        "Charge up to METERING_DEBIT_BATCH_ITEMS_MAX texts and ring-through attempts in "
        "one request: each item charged or refused on its own, answered in order.",
        switch_api.DebitBatchRequest,
        answer=answers.DebitBatchCharged,
        errors=(400, 401, 403, 422, 503),
    ),
    Endpoint(
        "POST",
        "/v1/calls",
        switch_api.post_call,
        ("switch",),
        "Reserve: open a call and grant its first chunk of seconds.",
        switch_api.ReserveRequest,
        answer=answers.CallGrant,
        errors=(*CHARGE_ERRORS, 429),
    ),
    Endpoint(
        "POST",
        "/v1/calls/{call_id}/extend",
        switch_api.post_call_extend,
        ("switch",),
        "Grant another chunk of seconds to an open call, or refuse with 402.",
        switch_api.ExtendRequest,
        answer=answers.CallGrant,
        errors=CHARGE_ERRORS,
    ),
    Endpoint(
        "POST",
        "/v1/calls/{call_id}/commit",
        switch_api.post_call_commit,
        ("switch",),
        "Hang-up: charge the real duration, release the rest of the reservation.",
        switch_api.CommitRequest,
        answer=answers.CallCharged,
        errors=CHARGE_ERRORS,
    ),
    Endpoint(
        "POST",
        "/v1/calls/{call_id}/release",
        switch_api.post_call_release,
        ("switch",),
        "The call never connected: release its reservation, charge nothing.",
        switch_api.ReleaseRequest,
        answer=answers.CallReleased,
    ),
    # The durable ledger: activity view and lag. Query parameters of the
    # activity endpoints: from, to (YYYY-MM-DD or RFC 3339), show, limit, cursor.
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/activity",
        activity_api.get_activity,
        ("customer", "ops"),
        "Ledger entries newest first: ?from=&to= (inclusive UTC dates or RFC 3339), "
        "show=all|debits|credits, limit, cursor (next_cursor of the previous page).",
        errors=(401, 403, 404, 422, 503),
        query=ACTIVITY_QUERY,
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/activity.csv",
        activity_api.get_activity_csv,
        ("customer", "ops"),
        "The same selection as /activity (from, to, show), all pages, as CSV.",
        errors=(401, 403, 404, 422, 503),
        query=ACTIVITY_QUERY[:3],
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/usage",
        activity_api.get_usage,
        ("customer", "ops"),
        "Usage at a glance for whole days in the customer's time zone: count and amount per "
        "billing item, spend per day by item, and each day's closing balance.",
        errors=(401, 403, 404, 422, 503),
        query=(
            ("from", "First day, YYYY-MM-DD in time_zone (inclusive)."),
            (
                "to",
                "Last day, YYYY-MM-DD in time_zone (inclusive); at most "
                "METERING_USAGE_DAYS_MAX days.",
            ),
            ("time_zone", "IANA time zone of the days, e.g. Europe/Berlin (default UTC)."),
        ),
    ),
    Endpoint(
        "GET",
        "/v1/ops/burn-rates",
        activity_api.get_burn_rates,
        ("ops",),
        "Each account's spend per minute over the last METERING_BURN_WINDOW_S, counted by "
        "the charging scripts (accounts that spent nothing are left out).",
        errors=(401, 403),
    ),
    Endpoint(
        "GET",
        "/v1/ops/ledger-lag",
        activity_api.get_ledger_lag,
        ("ops",),
        "Ledger entries not yet in Postgres and the age of the oldest, by shard.",
        errors=(401, 403),
    ),
    Endpoint(
        "GET",
        "/v1/ops/status",
        ops_api.get_ops_status,
        ("ops",),
        "For operators: versions (service, Redis, Postgres, schema), ledger lag, worker "
        "heartbeats, recharge backlog, the continuous reconcile's last pass; a part whose "
        "server does not answer says unavailable.",
        errors=(401, 403),
    ),
    # ---- payments ----
    Endpoint(
        "PUT",
        "/v1/accounts/{account_id}/recharge",
        payments_api.put_recharge,
        ("customer",),
        "Save the automatic recharge settings as one update (422 names the field).",
        payments_api.RechargeRequest,
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/payments",
        payments_api.post_payment,
        ("customer",),
        "Pay now: charge the card on file and add the amount, once per payment_id.",
        payments_api.PaymentRequest,
        errors=(400, 401, 402, 403, 404, 409, 422, 503),
    ),
    Endpoint(
        "PUT",
        "/v1/accounts/{account_id}/card",
        payments_api.put_card,
        ("customer",),
        "Register or replace the card on file: a confirmed SetupIntent, or a payment method id.",
        payments_api.CardRequest,
        errors=(400, 401, 402, 403, 404, 422, 503),
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/card/setup-intents",
        payments_api.post_card_setup,
        ("customer",),
        "Start registering a card: a Stripe SetupIntent (off-session use) whose client_secret "
        "the browser confirms with Stripe.js (confirmCardSetup); then PUT .../card.",
        success=201,
        errors=(401, 403, 404, 503),
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/receipt",
        payments_api.get_receipt,
        ("customer", "ops"),
        "A payment's receipt (pay now or automatic recharge), or a failed recharge attempt's "
        "record: amount, card, when, balance after, payment id. A receipt link's signature "
        "stands in for the token.",
        errors=(401, 403, 404, 422, 503),
        query=(
            ("payment", "The payment id (pay now's payment_id, or recharge:<episode>)."),
            ("attempt", "Or a recharge attempt: <episode>-<attempt number>."),
            ("signature", "The signature of a receipt link (then no token is needed)."),
        ),
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/card",
        payments_api.delete_card,
        ("customer",),
        "Delete the card on file (turns automatic recharge off).",
    ),
    Endpoint(
        "POST",
        "/v1/stripe/webhook",
        payments_api.post_stripe_webhook,
        (),
        "Stripe events (payment_intent.succeeded / payment_failed), signature-verified.",
        errors=(400, 413),
    ),
    # ---- phone numbers, alerts, events, webhooks ----
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/numbers",
        numbers_api.get_numbers,
        ("customer", "ops", "switch"),
        "The account's phone numbers: status (active, suspended), renewal, paid until, "
        "next attempt; ?status=all adds released ones.",
        errors=(401, 403, 404, 422, 503),
        query=(("status", "held (default) or all (with released numbers)."),),
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/numbers/{number}",
        numbers_api.delete_number,
        ("ops",),
        "Release a number: calls and texts naming it are refused from now on.",
        errors=(401, 403, 404, 422, 503),
    ),
    Endpoint(
        "GET",
        "/v1/ops/numbers/suspended",
        numbers_api.get_suspended_numbers,
        ("ops",),
        "Every suspended number (renewal unpaid), longest suspended first.",
        errors=(401, 403, 503),
    ),
    Endpoint(
        "PUT",
        "/v1/accounts/{account_id}/alerts",
        notify_api.put_alerts,
        ("customer", "ops"),
        "Low-balance alert settings: threshold (0: off) and email, as one update.",
        notify_api.AlertsRequest,
        errors=(400, 401, 403, 404, 422, 503),
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/events",
        notify_api.get_events,
        ("customer", "ops"),
        "The account's recent events (low balance, payments, numbers), newest first.",
        errors=(401, 403, 422, 503),
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/webhooks",
        notify_api.post_webhook,
        ("customer", "ops"),
        "Register a webhook endpoint for the account's events; answers its signing "
        "secret (shown once).",
        notify_api.WebhookRequest,
        success=201,
        errors=(400, 401, 403, 422, 503),
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/webhooks",
        notify_api.get_webhooks,
        ("customer", "ops"),
        "The account's webhooks with their recent deliveries (attempts, status, code).",
        errors=(401, 403, 422, 503),
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/webhooks/{webhook_id}",
        notify_api.delete_webhook,
        ("customer", "ops"),
        "Delete a webhook; its pending deliveries are dropped.",
        errors=(401, 403, 404, 503),
    ),
    Endpoint(
        "POST",
        "/v1/ops/webhooks",
        notify_api.post_ops_webhook,
        ("ops",),
        "Register a global webhook: the events of every account.",
        notify_api.WebhookRequest,
        success=201,
        errors=(400, 401, 403, 422, 503),
    ),
    Endpoint(
        "GET",
        "/v1/ops/webhooks",
        notify_api.get_ops_webhooks,
        ("ops",),
        "Every webhook (global and the accounts') with recent deliveries; ?failing=1 "
        "only those whose last attempt failed.",
        errors=(401, 403, 503),
        query=(("failing", "1: only failing webhooks."),),
    ),
    Endpoint(
        "DELETE",
        "/v1/ops/webhooks/{webhook_id}",
        notify_api.delete_ops_webhook,
        ("ops",),
        "Delete a global webhook.",
        errors=(401, 403, 404, 503),
    ),
    Endpoint(
        "GET",
        "/v1/billing-items",
        pages.get_billing_items,
        ("customer", "ops", "switch"),
        "Every billing item with its label in the product's words (for the pages).",
    ),
]
