"""The operator's command line, end to end: every command as a real
`python -m metering` process against a real Redis and Postgres (a private world
for this module), its text and --json output, and its error path: a clear
one-line message and the documented exit code, never a traceback."""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devkit.testing import RATE_CARD, ROOT, free_port, url_with_port
from metering import accounts, debits
from metering.accounts import account_for_token
from metering.entry_words import describe
from metering.payments import recharge_settings
from metering.tools import cli
from tests.fixtures_ledger import LedgerWorld, ledger_world

EXIT_OK, EXIT_DIFFERENCES, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_REFUSED = 0, 1, 2, 3, 4
# Independent commands run this many at a time (the suite has two cores).
PARALLEL_MAX = 3
CLI = [sys.executable, "-m", "metering", "--log-level", "warning"]


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[LedgerWorld]:
    async with ledger_world() as w:
        yield w


def run(world: LedgerWorld, *args: str, stdin: str | None = None, **changes: Any) -> Any:
    """`python -m metering <args>` to completion; a traceback fails the test."""
    done = subprocess.run(
        [*CLI, *args],
        cwd=ROOT,
        env=world.env(**changes),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def run_many(world: LedgerWorld, *commands: tuple[str, ...]) -> list[Any]:
    """Independent commands at once (each its own process), answers in order."""
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_MAX) as pool:
        return list(pool.map(lambda args: run(world, *args), commands))


def ok_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == EXIT_OK, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def json_lines(done: subprocess.CompletedProcess[str]) -> list[Any]:
    assert done.returncode == EXIT_OK, (done.returncode, done.stdout, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line]


def refused(done: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("error: "), done.stderr
    assert words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def card_file(tmp_path: Path, card: dict[str, int] | None = None) -> str:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card or RATE_CARD))
    return f"@{path}"


# ---------------------------------------------------------------- help, usage


def leaf_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for name in cli.COMMANDS:
        parser, _ = cli.command_parser(name)
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    out.append((f"{name} {sub_name}", sub))
    return out


def test_every_command_and_action_answers_help_with_a_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = []
    for words, parser in leaf_parsers():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*words.split(), "--help"])
        assert exit_info.value.code == 0, words
        out = capsys.readouterr().out
        assert out.startswith("usage: python -m metering"), words
        assert parser.description or any(a.help for a in parser._actions if a.dest != "help"), (
            f"{words}: no description"
        )
        seen.append(words)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name in cli.COMMANDS:
        assert name in top
    assert "2 usage or configuration" in top  # the exit codes are documented there
    for expected in ("accounts import", "tokens issue", "recharge set", "numbers release"):
        assert expected in seen


def test_a_bad_setting_or_option_is_a_usage_error(world: LedgerWorld) -> None:
    bad = subprocess.run(
        [*CLI, "lag"],
        cwd=ROOT,
        env={**world.env(), "METERING_SHARD_COUNT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    refused(bad, EXIT_USAGE, "METERING_SHARD_COUNT")
    unknown = run(world, "accounts", "show")  # missing argument: argparse's own usage error
    assert unknown.returncode == EXIT_USAGE and "account_id" in unknown.stderr


def test_a_server_that_does_not_answer_is_exit_3_in_one_line(world: LedgerWorld) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    done = run(world, "accounts", "show", "nobody", redis_url=closed, redis_timeout_s=1.0)
    refused(done, EXIT_UNAVAILABLE, "Redis did not answer")
    as_json = run(world, "lag", "--json", redis_url=closed, redis_timeout_s=1.0)
    assert as_json.returncode == EXIT_UNAVAILABLE
    assert json.loads(as_json.stdout)["error"] == "unavailable"


# ---------------------------------------------------------------- accounts


async def test_accounts_create_show_and_list(world: LedgerWorld, tmp_path: Path) -> None:
    made = ok_json(
        run(world, "accounts", "create", "cli-acme", "--rate-card", card_file(tmp_path), "--json")
    )
    assert made["created"] is True and made["balance_micros"] == 0
    again = run(world, "accounts", "create", "cli-acme", "--rate-card", card_file(tmp_path))
    assert again.returncode == EXIT_OK and "already exists (unchanged)" in again.stdout
    shown = run(world, "accounts", "show", "cli-acme")
    assert shown.returncode == EXIT_OK
    assert "account cli-acme" in shown.stdout and "balance     $0.00" in shown.stdout
    assert ok_json(run(world, "accounts", "show", "cli-acme", "--json"))["rate_card"] == RATE_CARD
    listed = json_lines(run(world, "accounts", "list", "--json"))
    assert "cli-acme" in {row["account_id"] for row in listed}
    # Postgres has it too (written through first).
    assert await world.conn.fetchval("SELECT count(*) FROM accounts WHERE id = 'cli-acme'") == 1


def test_accounts_create_refuses_bad_input_in_one_line(world: LedgerWorld, tmp_path: Path) -> None:
    bad = card_file(tmp_path, {**RATE_CARD, "sms_outbound_micros": -1})
    missing, not_json, bad_card, unknown = run_many(
        world,
        ("accounts", "create", "cli-x", "--rate-card", "@missing.json"),
        ("accounts", "create", "cli-x", "--rate-card", "{nope"),
        ("accounts", "create", "cli-x", "--rate-card", bad),
        ("accounts", "show", "nobody-here"),
    )
    refused(missing, EXIT_USAGE, "rate card file missing.json does not exist")
    refused(not_json, EXIT_USAGE, "the rate card is not JSON")
    refused(bad_card, EXIT_REFUSED, "rate_card.sms_outbound_micros")
    refused(unknown, EXIT_REFUSED, "no account 'nobody-here'")
    other_card = run(
        world,
        "accounts",
        "create",
        "cli-acme-2",
        "--rate-card",
        card_file(tmp_path),
    )
    assert other_card.returncode == EXIT_OK
    conflict = run(
        world,
        "accounts",
        "create",
        "cli-acme-2",
        "--rate-card",
        card_file(tmp_path, {**RATE_CARD, "sms_outbound_micros": 1}),
        "--json",
    )
    assert conflict.returncode == EXIT_REFUSED
    assert json.loads(conflict.stdout)["error"] == "account_exists"


def csv_text(rows: list[dict[str, Any]], header: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, header)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


async def test_accounts_import_checks_every_row_first_and_is_idempotent(
    world: LedgerWorld, tmp_path: Path
) -> None:
    header = ["account_id", "sms_outbound_micros", "max_concurrent_calls", "credit_micros"]
    rows = [
        {
            "account_id": "imp-1",
            "sms_outbound_micros": 100,
            "max_concurrent_calls": 2,
            "credit_micros": 5_000_000,
        },
        {
            "account_id": "imp-2",
            "sms_outbound_micros": "",
            "max_concurrent_calls": "",
            "credit_micros": "",
        },
        {
            "account_id": "imp-3",
            "sms_outbound_micros": 300,
            "max_concurrent_calls": 0,
            "credit_micros": 1,
        },
    ]
    path = tmp_path / "accounts.csv"
    bad = [*rows[:2], {**rows[2], "sms_outbound_micros": "lots"}]
    path.write_text(csv_text(bad, header))
    refused(
        run(world, "accounts", "import", str(path), "--rate-card", card_file(tmp_path)),
        EXIT_USAGE,
        "line 4: sms_outbound_micros: sms_outbound_micros must be a whole number",
    )
    lacking = run(world, "accounts", "import", str(path))  # no --rate-card for the rest
    refused(lacking, EXIT_USAGE, "lacks the price column")
    assert await world.conn.fetchval("SELECT count(*) FROM accounts WHERE id LIKE 'imp-%'") == 0

    path.write_text(csv_text(rows, header))
    dry = ok_json(
        run(
            world,
            "accounts",
            "import",
            str(path),
            "--rate-card",
            card_file(tmp_path),
            "--dry-run",
            "--json",
        )
    )
    assert dry == {"rows": 3, "created": 0, "existing": 0, "credited": 0, "dry_run": True}
    done = ok_json(
        run(world, "accounts", "import", str(path), "--rate-card", card_file(tmp_path), "--json")
    )
    assert done == {"rows": 3, "created": 3, "existing": 0, "credited": 2}
    again = ok_json(
        run(
            world,
            "accounts",
            "import",
            "-",
            "--rate-card",
            card_file(tmp_path),
            "--json",
            stdin=csv_text(rows, header),
        )
    )
    assert again == {"rows": 3, "created": 0, "existing": 3, "credited": 0}
    one = await accounts.get_account(world.store, "imp-1")
    assert one.balance_micros == 5_000_000 and one.max_concurrent_calls == 2
    assert one.rate_card.sms_outbound_micros == 100
    two = await accounts.get_account(world.store, "imp-2")
    assert two.rate_card.sms_outbound_micros == RATE_CARD["sms_outbound_micros"]
    # An account that exists with other prices refuses the whole file.
    changed = [{**rows[0], "sms_outbound_micros": 999}, {**rows[1], "account_id": "imp-4"}]
    path.write_text(csv_text(changed, header))
    refused(
        run(world, "accounts", "import", str(path), "--rate-card", card_file(tmp_path)),
        EXIT_REFUSED,
        "line 2: account imp-1 already exists with another rate card",
    )
    assert await world.conn.fetchval("SELECT count(*) FROM accounts WHERE id = 'imp-4'") == 0


# ---------------------------------------------------------------- money


async def test_credit_and_adjust_with_a_reason_once_per_id(
    world: LedgerWorld, tmp_path: Path
) -> None:
    run(world, "accounts", "create", "cli-money", "--rate-card", card_file(tmp_path))
    goodwill = ("credit", "cli-money", "--amount-usd", "12.50", "--reason", "goodwill")
    credit = ok_json(run(world, *goodwill, "--credit-id", "c-1", "--json"))
    assert credit["credited_micros"] == 12_500_000 and credit["replayed"] is False
    again = ok_json(run(world, *goodwill, "--credit-id", "c-1", "--json"))
    assert again["replayed"] is True and again["balance_micros"] == 12_500_000
    text = run(world, "credit", "cli-money", "--amount-micros", "1", "--reason", "penny")
    assert text.returncode == EXIT_OK and "of $0.000001 done" in text.stdout
    assert "cli-" in text.stdout  # the generated credit id is printed

    taken = ok_json(
        run(
            world,
            "adjust",
            "cli-money",
            "--amount-usd",
            "-2.5",
            "--reason",
            "double credit",
            "--adjustment-id",
            "a-1",
            "--json",
        )
    )
    assert taken["amount_micros"] == -2_500_000 and taken["balance_micros"] == 10_000_001
    added = ok_json(
        run(world, "adjust", "cli-money", "--amount-micros", "4", "--reason", "rounding", "--json")
    )
    assert added["balance_micros"] == 10_000_005

    answers = run_many(
        world,
        ("adjust", "cli-money", "--amount-usd", "-100", "--reason", "too much"),
        ("credit", "cli-money", "--amount-usd", "1.0000001", "--reason", "x"),
        ("credit", "cli-money", "--amount-usd", "-1", "--reason", "x"),
        ("adjust", "cli-money", "--amount-micros", "5", "--reason", " "),
        ("credit", "nobody-here", "--amount-usd", "1", "--reason", "x"),
        ("credit", "cli-money", "--amount-usd", "13", "--reason", "goodwill", "--credit-id", "c-1"),
        ("ledger", "replay", "--from-seq", "2"),
        ("ledger", "replay", "--from", "yesterday"),
    )
    expected = [
        (EXIT_REFUSED, "has 10000005 micros available"),
        (EXIT_USAGE, "not a whole number of micros"),
        (EXIT_USAGE, "must be positive"),
        (EXIT_REFUSED, "needs a reason"),
        (EXIT_REFUSED, "no account 'nobody-here'"),
        (EXIT_REFUSED, "different request body"),
        (EXIT_USAGE, "need --account"),
        (EXIT_USAGE, "--from must be"),
    ]
    for done, (code, words) in zip(answers, expected, strict=True):
        refused(done, code, words)

    # The ledger holds each with its reason: drain it and replay it.
    assert run(world, "ledger-writer", "--drain").returncode == EXIT_OK
    entries = json_lines(run(world, "ledger", "replay", "--account", "cli-money"))
    assert [(e["item"], e["amount_micros"], e["detail"]) for e in entries] == [
        ("funds_added", 12_500_000, "ops_credit: goodwill"),
        ("funds_added", 1, "ops_credit: penny"),
        ("adjustment_taken", -2_500_000, "ops_adjustment: double credit"),
        ("adjustment_added", 4, "ops_adjustment: rounding"),
    ]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    # The activity view says what an adjustment was, with its reason.
    assert describe("adjustment_taken", entries[2]["detail"]) == (
        "Balance adjustment (taken): double credit"
    )
    part = run(
        world,
        "ledger",
        "replay",
        "--account",
        "cli-money",
        "--from-seq",
        "2",
        "--to-seq",
        "3",
        "--format",
        "csv",
    )
    assert part.returncode == EXIT_OK
    table = list(csv.DictReader(io.StringIO(part.stdout)))
    assert [r["seq"] for r in table] == ["2", "3"] and table[1]["item"] == "adjustment_taken"
    assert "ledger replay: 2 entries" in part.stderr
    everyone = json_lines(run(world, "ledger", "replay", "--from", "2000-01-01", "--limit", "3"))
    assert len(everyone) == 3


# ---------------------------------------------------------------- tokens


async def test_tokens_issue_list_and_revoke(world: LedgerWorld, tmp_path: Path) -> None:
    run(world, "accounts", "create", "cli-tok", "--rate-card", card_file(tmp_path))
    issued = ok_json(run(world, "tokens", "issue", "cli-tok", "--label", "support", "--json"))
    assert await account_for_token(world.store, issued["token"]) == "cli-tok"
    text = run(world, "tokens", "issue", "cli-tok", "--label", "dashboard")
    assert text.returncode == EXIT_OK and "/dashboard?account=cli-tok&token=" in text.stdout
    listed = json_lines(run(world, "tokens", "list", "cli-tok", "--json"))
    assert [t["label"] for t in listed] == ["support", "dashboard"]
    assert listed[0]["token_id"] == issued["token_id"] and "token" not in listed[0]
    revoked = ok_json(run(world, "tokens", "revoke", "cli-tok", issued["token_id"], "--json"))
    assert [t["label"] for t in revoked["revoked"]] == ["support"]
    assert await account_for_token(world.store, issued["token"]) is None
    unknown_account, long_label, unknown_token, bad_id = run_many(
        world,
        ("tokens", "issue", "nobody-here", "--label", "x"),
        ("tokens", "issue", "cli-tok", "--label", "x" * 500),
        ("tokens", "revoke", "cli-tok", "0123456789abcdef"),
        ("tokens", "revoke", "cli-tok", "not-an-id"),
    )
    refused(unknown_account, EXIT_REFUSED, "no account 'nobody-here'")
    refused(long_label, EXIT_REFUSED, "label")
    refused(unknown_token, EXIT_REFUSED, "has no token 0123456789abcdef")
    refused(bad_id, EXIT_REFUSED, "token_id: a token id is 16 lowercase hex characters")


# ---------------------------------------------------------------- recharge


async def test_recharge_show_off_and_only_lower(world: LedgerWorld, tmp_path: Path) -> None:
    run(world, "accounts", "create", "cli-rc", "--rate-card", card_file(tmp_path))
    never = run(world, "recharge", "show", "cli-rc")
    assert never.returncode == EXIT_OK and "never set" in never.stdout
    refused(
        run(world, "recharge", "set", "cli-rc", "--amount-micros", "60000000"),
        EXIT_REFUSED,
        "no recharge settings to change",
    )
    await world.conn.execute(
        "INSERT INTO cards_on_file (account_id, payment_method_id, brand, last4, exp_month, "
        "exp_year) VALUES ('cli-rc', 'pm_x', 'visa', '4242', 12, 2040)"
    )
    await recharge_settings.save_settings(
        world.store,
        world.pool,
        "cli-rc",
        {
            "amount_micros": 80_000_000,
            "threshold_micros": 20_000_000,
            "failure_email": "a@example.com",
            "enabled": True,
        },
    )
    shown = ok_json(run(world, "recharge", "show", "cli-rc", "--json"))
    assert shown["saved"]["enabled"] is True and shown["live"]["amount_micros"] == 80_000_000
    refused(
        run(world, "recharge", "set", "cli-rc", "--amount-micros", "90000000"),
        EXIT_REFUSED,
        "only the customer may raise the recharge amount",
    )
    refused(
        run(world, "recharge", "set", "cli-rc", "--threshold-micros", "5000000"),
        EXIT_REFUSED,
        "threshold_micros must be at least",
    )
    lower = ok_json(
        run(
            world,
            "recharge",
            "set",
            "cli-rc",
            "--amount-micros",
            "60000000",
            "--failure-email",
            "b@example.com",
            "--json",
        )
    )
    assert lower["saved"]["amount_micros"] == 60_000_000
    assert lower["live"]["failure_email"] == "b@example.com"  # copied into Redis
    off = ok_json(run(world, "recharge", "off", "cli-rc", "--json"))
    assert off["saved"]["enabled"] is False and off["live"]["enabled"] is False
    ok_json(run(world, "recharge", "set", "cli-rc", "--threshold-micros", "15000000", "--json"))
    saved = await recharge_settings.saved_settings(world.pool, "cli-rc")
    assert saved is not None and saved.enabled is False and saved.threshold_micros == 15_000_000
    refused(run(world, "recharge", "off", "nobody-here"), EXIT_REFUSED, "no account")


# ---------------------------------------------------------------- numbers


async def test_numbers_list_and_release(world: LedgerWorld, tmp_path: Path) -> None:
    run(world, "accounts", "create", "cli-num", "--rate-card", card_file(tmp_path))
    run(world, "credit", "cli-num", "--amount-usd", "10", "--reason", "funds")
    await debits.number_purchase(world.store, "cli-num", "p-1", "+15550001111")
    listed = json_lines(run(world, "numbers", "list", "cli-num", "--json"))
    assert [(n["number"], n["status"]) for n in listed] == [("+15550001111", "active")]
    assert json_lines(run(world, "numbers", "suspended", "--json")) == []
    released = ok_json(
        run(
            world, "numbers", "release", "cli-num", "+15550001111", "--reason", "port-out", "--json"
        )
    )
    assert released["status"] == "released" and released["release_reason"] == "port-out"
    assert json_lines(run(world, "numbers", "list", "cli-num", "--json")) == []
    refused(
        run(world, "numbers", "release", "cli-num", "+15550001111"),
        EXIT_REFUSED,
        "holds no phone number +15550001111",
    )
    refused(run(world, "numbers", "release", "cli-num", "555"), EXIT_REFUSED, "number")
    refused(run(world, "numbers", "list", "nobody-here"), EXIT_REFUSED, "no account")


# ---------------------------------------------------------------- lag, reconcile, rebuild


async def test_lag_reconcile_and_rebuild(world: LedgerWorld, tmp_path: Path) -> None:
    run(world, "accounts", "create", "cli-lag", "--rate-card", card_file(tmp_path))
    run(world, "credit", "cli-lag", "--amount-usd", "1", "--reason", "funds")
    behind = ok_json(run(world, "lag", "--json"))
    assert behind["entries_behind"] >= 1
    check = run(world, "lag", "--max-age-ms", "0")
    assert check.returncode == EXIT_DIFFERENCES and "not yet in Postgres" in check.stdout
    assert run(world, "ledger-writer", "--drain").returncode == EXIT_OK
    assert ok_json(run(world, "lag", "--json"))["entries_behind"] == 0

    report = ok_json(run(world, "reconcile", "--json"))
    assert report["ok"] is True and report["differences"] == []
    rebuilt = ok_json(run(world, "rebuild", "--json"))
    assert rebuilt["accounts_restored"] == 0 and rebuilt["accounts_kept"] >= 1

    # A tampered ledger row: reconcile says so, exit 1, in both forms.
    await world.conn.execute(
        "UPDATE ledger_entries SET amount_micros = amount_micros + 1 "
        "WHERE account_id = 'cli-lag' AND seq = 1"
    )
    try:
        bad = run(world, "reconcile", "--json")
        assert bad.returncode == EXIT_DIFFERENCES
        found = json.loads(bad.stdout)
        assert found["ok"] is False
        assert {d["account_id"] for d in found["differences"]} == {"cli-lag"}
        text = run(world, "reconcile")
        assert text.returncode == EXIT_DIFFERENCES and "DIFFERENCE account=cli-lag" in text.stdout
    finally:
        await world.conn.execute(
            "UPDATE ledger_entries SET amount_micros = amount_micros - 1 "
            "WHERE account_id = 'cli-lag' AND seq = 1"
        )


def test_the_remaining_error_paths_exit_with_their_codes(world: LedgerWorld) -> None:
    closed_db = url_with_port(world.settings.database_url, free_port())
    cut = {"database_url": closed_db, "database_timeout_s": 1.0}
    answers = run_many(
        world,
        ("accounts", "list", "--limit", "0"),
        ("numbers", "suspended", "--limit", "0"),
        ("accounts", "import", "missing.csv"),
        ("ledger", "replay", "--limit", "0"),
    )
    expected = [
        (EXIT_USAGE, "--limit must be between 1 and"),
        (EXIT_USAGE, "--limit must be between 1 and"),
        (EXIT_USAGE, "CSV file missing.csv does not exist"),
        (EXIT_USAGE, "--limit must be between 1 and"),
    ]
    for done, (code, words) in zip(answers, expected, strict=True):
        refused(done, code, words)
    # Postgres unreachable: the commands that need it say so, exit 3.
    for args in (("rebuild",), ("reconcile",), ("tokens", "list", "x"), ("ledger", "replay")):
        done = run(world, *args, **cut)
        refused(done, EXIT_UNAVAILABLE, "did not answer")
