"""An account row read by a request's authentication, adopted by its transaction."""

from __future__ import annotations

import pytest

from certvault.services.directory import accounts
from certvault.services.kernel.tenancy import adopt_account, get_account


def test_an_adopted_account_survives_a_rolled_back_attempt(ports, account):
    with ports.db.read() as s:
        read = get_account(s, "acme")  # as authentication reads it, in a session now closed
    # A first attempt rolls back (a conflict or a lost connection) and the request runs again.
    with pytest.raises(RuntimeError), ports.db.transaction() as s:
        adopt_account(s, read)
        assert get_account(s, "acme").id == read.id
        raise RuntimeError("the attempt fails")
    with ports.db.transaction() as s:
        adopt_account(s, read)
        adopted = get_account(s, "acme")
        assert (adopted.id, adopted.slug, adopted.uuid) == (read.id, "acme", read.uuid)
        assert adopted is not read and adopted in s and not s.dirty
    assert read.slug == "acme" and read.key_vault_enabled == adopted.key_vault_enabled


def test_another_account_is_read_not_adopted(ports, account, operator):
    accounts.create_account(ports, operator, "Beta", "beta")
    with ports.db.read() as s:
        read = get_account(s, "acme")
    with ports.db.transaction() as s:
        adopt_account(s, read)
        assert get_account(s, "beta").slug == "beta"
        assert get_account(s, "acme").id == read.id
