"""A failed charge in the customer's words: what happened and nothing more
(Stripe's decline codes stay in recharge_attempts and the logs)."""

from __future__ import annotations

# Stripe decline codes (https://docs.stripe.com/declines/codes). A lost or
# stolen card is reported as a plain decline, as Stripe advises.
DECLINE_WORDS = {
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code was refused.",
    "incorrect_number": "Your card number was refused.",
    "processing_error": "Your card could not be processed.",
    "authentication_required": "Your bank asks you to confirm this payment.",
    "requires_action": "Your bank asks you to confirm this payment.",
    "payment_intent_authentication_failure": "Your bank did not confirm the payment.",
    "card_velocity_exceeded": "Your card's limit was reached.",
}
DECLINED = "Your card was declined."
UNREACHABLE = "The card processor did not answer."
NO_CARD = "There is no card on file."


def failure_words(reason: str) -> str:
    """The sentence for a ChargeOutcome.reason ("<code>: <message>", "no card on
    file", "Stripe unreachable: ..." or "Stripe error <status>: ...")."""
    if reason == "no card on file":
        return NO_CARD
    if reason.startswith(("Stripe unreachable", "Stripe error")):
        return UNREACHABLE
    code = reason.split(":", 1)[0].strip()
    return DECLINE_WORDS.get(code, DECLINED)
