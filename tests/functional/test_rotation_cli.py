"""`certvault kek rotate-account`, the real command: dry run, a rotation, and bad input."""

from __future__ import annotations

import pytest

from tests.functional import cli_env


@pytest.fixture
def cli(tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for("sqlite", tmp_path)


def _state(cli) -> tuple[list[tuple], list[tuple]]:  # type: ignore[no-untyped-def]
    keys = cli.sql("SELECT version, destroyed_at IS NULL FROM account_keys ORDER BY version")
    rows = cli.sql(
        "SELECT account_key_version, data_key_nonce, wrapped_data_key FROM escrowed_keys"
        " ORDER BY id"
    )
    return keys, rows


def test_dry_run_then_rotation(cli):
    cli.bootstrap(keys=7)
    before = _state(cli)

    dry = cli.run("kek", "rotate-account", "acme", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    said = cli_env.text(dry)
    assert "account acme: account key v1 -> v2 (a new version)" in said
    assert "would rewrap 7 data keys (v1: 7); would retire v1" in said
    assert "nothing was changed" in said
    assert _state(cli) == before

    done = cli.run("kek", "rotate-account", "acme", "--batch-size", "3")
    assert done.returncode == 0, done.stderr
    said = cli_env.text(done)
    assert "rewrapped 7 data keys in 3 batches" in said
    assert "account key v2 in use; retired v1" in said
    assert "backups taken before still hold it" in said
    keys, rows = _state(cli)
    assert keys == [(1, 0), (2, 1)]
    assert {r[0] for r in rows} == {2} and len(rows) == 7
    assert all(new[1:] != old[1:] for new, old in zip(rows, before[1], strict=True))


# Each call starts the command afresh (seconds); the service's tests try many more values.
BAD = [
    (["acme", "--batch-size", "0"], "invalid_input", 2),
    (["ACME; DROP TABLE accounts", "--dry-run"], "not_found", 1),
]


def test_bad_input_is_refused_and_changes_nothing(cli):
    cli.bootstrap(keys=1)
    before = _state(cli)
    for args, code, exit_code in BAD:
        proc = cli.run("kek", "rotate-account", *args)
        assert proc.returncode == exit_code, (args, cli_env.text(proc))
        if code is not None:
            assert f"[{code}]" in cli_env.text(proc), args
        assert "Traceback" not in proc.stderr
    assert _state(cli) == before


def test_a_key_that_does_not_open_is_named_and_the_old_version_kept(cli):
    cli.bootstrap(keys=2)
    [(key_uuid,)] = cli.sql("SELECT uuid FROM escrowed_keys ORDER BY id LIMIT 1")
    cli.sql("UPDATE escrowed_keys SET data_key_nonce = ? WHERE uuid = ?", [b"\x00" * 12, key_uuid])
    proc = cli.run("kek", "rotate-account", "acme")
    said = cli_env.text(proc)
    assert proc.returncode == 1, said
    assert f"FAILED key {key_uuid}: its data key does not open (seal_broken)" in said
    assert "[rotation_failed]: 1 keys could not be rewrapped; the old account key is kept" in said
    assert "rewrapped 1 data keys" in said
    assert _state(cli)[0] == [(1, 1), (2, 1)]  # both versions live
