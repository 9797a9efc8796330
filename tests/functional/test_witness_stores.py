"""Both witness stores keep the same promise: a chain head and a grant generation only move
forward, whatever order writers finish in. The Redis store runs against the real server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from certvault.services.kernel.witness import AuditHeadStore, ChainHead
from certvault.services.kernel.witness_redis import RedisWitness

REDIS_URL = os.environ.get("CERTVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the real Redis, emptied afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
        pytest.skip("Redis is not reachable")
    prefix = f"certvault-test:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    if request.param == "file":
        yield AuditHeadStore(tmp_path / "heads")
    else:
        yield RedisWitness(REDIS_URL, prefix=request.getfixturevalue("redis_prefix"))


def test_a_head_only_moves_forward(store) -> None:  # type: ignore[no-untyped-def]
    assert store.read("chain-a") is None
    store.advance([ChainHead("chain-a", 5, "aa" * 32)])
    store.advance([ChainHead("chain-a", 3, "bb" * 32)])  # a slower writer finishing late
    assert store.read("chain-a") == ChainHead("chain-a", 5, "aa" * 32)
    store.advance([ChainHead("chain-a", 6, "cc" * 32), ChainHead("chain-b", 1, "dd" * 32)])
    assert store.read("chain-a") == ChainHead("chain-a", 6, "cc" * 32)
    assert sorted(h.chain for h in store.all()) == ["chain-a", "chain-b"]


def test_a_grant_generation_only_moves_forward(store) -> None:  # type: ignore[no-untyped-def]
    account = str(uuid.uuid4())
    assert store.generation(account) == 0
    store.advance_generation(account, 4)
    store.advance_generation(account, 2)
    assert store.generation(account) == 4
    store.advance_generation(account, 7)
    assert store.generation(account) == 7


def test_a_cut_chain_stops_writers_with_the_redis_witness(
    tmp_path, database_url, redis_prefix
) -> None:  # type: ignore[no-untyped-def]
    """The witness in Redis, as several nodes share it: the cut release is refused as with files."""
    from sqlalchemy import delete, select, update

    from certvault.db.models import AuditEvent, AuditHead
    from certvault.services.audit import checks
    from certvault.services.audit import log as audit
    from certvault.services.directory import accounts
    from certvault.services.kernel import tenancy
    from certvault.services.kernel.ports import open_ports
    from tests.conftest import TEST_OPERATOR, make_settings

    settings = make_settings(
        tmp_path / "home",
        database_url,
        audit_witness_url=REDIS_URL,
        audit_witness_prefix=redis_prefix,
    )
    ports = open_ports(settings)
    try:
        accounts.initialize(ports, TEST_OPERATOR)
        accounts.create_account(ports, TEST_OPERATOR, "Acme Corp", "acme", key_vault_enabled=True)

        def record(s):  # type: ignore[no-untyped-def]
            account = tenancy.get_account(s, "acme")
            return audit.record(s, ports, account=account, actor=TEST_OPERATOR, action="t.x")

        first, second = ports.db.run(record), ports.db.run(record)
        assert isinstance(ports.audit_heads, RedisWitness)
        assert ports.audit_heads.read(second.chain) == ChainHead(
            second.chain, second.seq, second.mac
        )
        with ports.db.transaction() as s:
            s.execute(delete(AuditEvent).where(AuditEvent.id == second.id))
            s.execute(
                update(AuditHead)
                .where(AuditHead.chain == first.chain)
                .values(seq=first.seq, mac=first.mac)
            )
        with pytest.raises(audit.AuditChainBroken):
            ports.db.run(record)
        with ports.db.read() as s:
            kept = s.scalars(select(AuditEvent.seq).where(AuditEvent.chain == first.chain)).all()
        assert max(kept) == first.seq
        assert not checks.verify_chains(ports).ok
    finally:
        ports.close()
