"""The audit chains (DESIGN.md §5.3): whoever can write the database cannot edit, delete, insert,
reorder or cut off events unnoticed; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import pytest
from sqlalchemy import delete, select, text, update

from certvault.db.models import Account, AuditEvent, AuditHead
from certvault.errors import CertvaultError
from certvault.services.audit import checks as audit_checks
from certvault.services.audit import log as audit
from certvault.services.directory import accounts
from certvault.services.kernel.witness import ChainHead
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from tests.factories import make_cert, make_p12, new_key

PW = "import-password-1"


@dataclass(frozen=True)
class Chains:
    acme: str
    beta: str


def _import(ports, actor, slug, email):  # type: ignore[no-untyped-def]
    key = new_key("ec256")
    [entry] = import_p12(ports, actor, slug, make_p12(key, make_cert(key, email), PW), PW)
    assert entry.ok
    return entry.client_cert_id


def _uuid(ports, slug: str) -> str:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        return s.scalars(select(Account.uuid).where(Account.slug == slug)).one()


def _chain(ports, chain: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        return list(
            s.scalars(select(AuditEvent).where(AuditEvent.chain == chain).order_by(AuditEvent.seq))
        )


@pytest.fixture
def chains(ports, operator, account) -> Chains:  # type: ignore[no-untyped-def]
    """Two accounts with archives and releases each; acme's chain has at least 8 events."""
    accounts.create_account(ports, operator, "Beta Ltd", "beta", key_vault_enabled=True)
    acme_ids = [_import(ports, operator, "acme", f"user{i}@acme.example") for i in range(4)]
    beta_ids = [_import(ports, operator, "beta", f"user{i}@beta.example") for i in range(2)]
    for cid in acme_ids[:3]:
        release_key(ports, operator, "acme", cid, passphrase=None, reason="lost laptop")
    release_key(ports, operator, "beta", beta_ids[0], passphrase=None, reason="new phone")
    result = Chains(_uuid(ports, "acme"), _uuid(ports, "beta"))
    assert len(_chain(ports, result.acme)) == 8  # account.create, 4 archives, 3 releases
    report = audit_checks.verify_chains(ports)
    assert report.ok, report.problems
    return result


def _only_problem(ports, chain: str) -> audit_checks.AuditProblem:  # type: ignore[no-untyped-def]
    report = audit_checks.verify_chains(ports)
    assert not report.ok
    assert [p.chain for p in report.problems] == [chain], report.problems
    return report.problems[0]


def test_untouched_chains_verify(ports, chains):
    report = audit_checks.verify_chains(ports)
    assert report.ok and report.problems == []
    assert report.chains == 3  # installation, acme, beta
    with ports.db.read() as s:
        assert report.events == len(list(s.scalars(select(AuditEvent.id))))
    acme = _chain(ports, chains.acme)
    assert [e.seq for e in acme] == list(range(1, len(acme) + 1))
    assert acme[0].prev_mac == audit.GENESIS
    assert all(b.prev_mac == a.mac for a, b in zip(acme, acme[1:], strict=False))
    assert [e.action for e in acme].count("key.archive") == 4
    assert [e.action for e in acme].count("key.release") == 3


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "admin:somebody-else"),
        ("details", '{"reason":"routine check"}'),
        ("outcome", "refused"),
        ("occurred_at", "2020-01-01T00:00:00.000000Z"),
        ("action", "key.archive"),
        ("target_id", "999"),
        ("ip", "203.0.113.7"),
        ("prev_mac", "ab" * 32),
    ],
)
def test_edited_field_is_found(ports, chains, column, value):
    victim = _chain(ports, chains.acme)[5]  # a release event in the middle
    assert getattr(victim, column) != value
    with ports.db.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == victim.id).values({column: value}))
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (victim.seq, victim.id)
    assert "MAC" in problem.reason


def test_edit_through_the_orm_reports_the_first_broken_event(ports, chains):
    events = _chain(ports, chains.acme)
    with ports.db.transaction() as s:
        for victim in (events[6], events[3]):
            row = s.get_one(AuditEvent, victim.id)
            row.details = row.details.replace('"new_key":true', '"new_key":false').replace(
                '"lost laptop"', '"routine"'
            )
    assert _chain(ports, chains.acme)[3].details != events[3].details
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (4, events[3].id)


def test_deleted_event_is_found(ports, chains):
    events = _chain(ports, chains.acme)
    with ports.db.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == events[3].id))
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (5, events[4].id)
    assert "event 4 is missing" in problem.reason


def test_deleted_event_with_renumbered_rest_is_found(ports, chains):
    events = _chain(ports, chains.acme)
    last = events[-1]
    with ports.db.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == events[3].id))
        for ev in events[4:]:
            s.execute(update(AuditEvent).where(AuditEvent.id == ev.id).values(seq=ev.seq - 1))
        s.execute(update(AuditHead).where(AuditHead.chain == chains.acme).values(seq=last.seq - 1))
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (4, events[4].id)
    assert "MAC" in problem.reason


def test_forged_event_appended_is_found(ports, chains):
    last = _chain(ports, chains.acme)[-1]
    forged_mac = hashlib.sha256(os.urandom(16)).hexdigest()
    with ports.db.transaction() as s:
        forged = AuditEvent(
            chain=chains.acme,
            seq=last.seq + 1,
            account_id=last.account_id,
            occurred_at=last.occurred_at,
            actor=last.actor,
            action="key.archive",
            outcome="success",
            target_type="certificate",
            target_id="1",
            ip="",
            details="{}",
            prev_mac=last.mac,
            mac=forged_mac,
        )
        s.add(forged)
        s.flush()
        forged_id = forged.id
        s.execute(
            update(AuditHead)
            .where(AuditHead.chain == chains.acme)
            .values(seq=last.seq + 1, mac=forged_mac)
        )
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (last.seq + 1, forged_id)
    assert "MAC" in problem.reason


def test_forged_event_inserted_in_the_middle_is_found(ports, chains):
    events = _chain(ports, chains.acme)
    with ports.db.transaction() as s:
        # Make room at seq 4 (two steps, so the unique (chain, seq) holds on both backends).
        for ev in events[3:]:
            s.execute(update(AuditEvent).where(AuditEvent.id == ev.id).values(seq=-ev.seq))
        for ev in events[3:]:
            s.execute(update(AuditEvent).where(AuditEvent.id == ev.id).values(seq=ev.seq + 1))
        s.execute(
            text(
                "INSERT INTO audit_events (chain, seq, account_id, occurred_at, actor, action,"
                " outcome, target_type, target_id, ip, details, prev_mac, mac) VALUES (:chain, 4,"
                " :account_id, :at, :actor, 'key.release', 'success', 'certificate', '1', '',"
                " '{}', :prev, :mac)"
            ),
            {
                "chain": chains.acme,
                "account_id": events[2].account_id,
                "at": events[2].occurred_at,
                "actor": events[2].actor,
                "prev": events[2].mac,
                "mac": hashlib.sha256(b"forged").hexdigest(),
            },
        )
        forged_id = s.scalars(
            select(AuditEvent.id).where(AuditEvent.chain == chains.acme, AuditEvent.seq == 4)
        ).one()
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (4, forged_id)


def test_swapped_seq_is_found(ports, chains):
    events = _chain(ports, chains.acme)
    a, b = events[2], events[3]
    with ports.db.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == a.id).values(seq=-1))
        s.execute(update(AuditEvent).where(AuditEvent.id == b.id).values(seq=a.seq))
        s.execute(update(AuditEvent).where(AuditEvent.id == a.id).values(seq=b.seq))
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (3, b.id)


def test_swapped_contents_are_found(ports, chains):
    events = _chain(ports, chains.acme)
    a, b = events[4], events[5]
    fields = [
        "occurred_at",
        "actor",
        "action",
        "outcome",
        "target_type",
        "target_id",
        "ip",
        "details",
        "prev_mac",
        "mac",
    ]
    with ports.db.transaction() as s:
        s.execute(
            update(AuditEvent)
            .where(AuditEvent.id == a.id)
            .values({f: getattr(b, f) for f in fields})
        )
        s.execute(
            update(AuditEvent)
            .where(AuditEvent.id == b.id)
            .values({f: getattr(a, f) for f in fields})
        )
    problem = _only_problem(ports, chains.acme)
    assert (problem.seq, problem.event_id) == (5, a.id)


@pytest.mark.parametrize("cut", [1, 3])
def test_cut_off_newest_events_is_found_by_the_head_outside(ports, chains, cut):
    events = _chain(ports, chains.acme)
    keep = events[:-cut]
    with ports.db.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id.in_([e.id for e in events[-cut:]])))
        # Make the database look consistent: its own head points at the new last event.
        s.execute(
            update(AuditHead)
            .where(AuditHead.chain == chains.acme)
            .values(seq=keep[-1].seq, mac=keep[-1].mac)
        )
    problem = _only_problem(ports, chains.acme)
    assert problem.seq == keep[-1].seq + 1 and problem.event_id is None
    assert "cut off" in problem.reason
    assert f"{keep[-1].seq + 1}..{events[-1].seq}" in problem.reason


def test_rewritten_table_with_plain_hash_chain_is_found(ports, chains):
    """An attacker without the audit key rebuilds every chain as a SHA-256 chain.

    The attacker hides a release and also writes the database heads and the head files, so only
    the key distinguishes a real MAC from a hash.
    """
    hidden = _chain(ports, chains.acme)[-1]
    assert hidden.action == "key.release"
    with ports.db.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == hidden.id))
        names = sorted(set(s.scalars(select(AuditEvent.chain))))
        forged_heads = []
        for name in names:
            prev = audit.GENESIS
            rows = s.scalars(
                select(AuditEvent).where(AuditEvent.chain == name).order_by(AuditEvent.seq)
            ).all()
            for row in rows:
                row.prev_mac = prev
                row.mac = hashlib.sha256(audit._event_bytes(row)).hexdigest()
                prev = row.mac
            s.get_one(AuditHead, name).seq = rows[-1].seq
            s.get_one(AuditHead, name).mac = prev
            forged_heads.append(ChainHead(name, rows[-1].seq, prev))
    for head in forged_heads:
        path = ports.audit_heads.directory / f"{head.chain}.head"
        path.write_text(json.dumps({"chain": head.chain, "seq": head.seq, "mac": head.mac}))
    report = audit_checks.verify_chains(ports)
    assert not report.ok
    assert sorted(p.chain for p in report.problems) == sorted(names)
    assert {chains.acme, chains.beta, audit.INSTALLATION_CHAIN} <= set(names)
    assert all(p.seq == 1 and "MAC" in p.reason for p in report.problems)


def test_refused_release_is_in_the_chain_and_it_still_verifies(ports, operator, chains):
    cid = _import(ports, operator, "acme", "short@acme.example")
    before = _chain(ports, chains.acme)
    with pytest.raises(CertvaultError) as refused:
        release_key(ports, operator, "acme", cid, passphrase="short", reason="r")
    assert refused.value.code == "weak_passphrase"
    after = _chain(ports, chains.acme)
    assert len(after) == len(before) + 1
    ev = after[-1]
    assert (ev.action, ev.outcome, ev.actor) == ("key.release", "refused", operator.name)
    assert json.loads(ev.details)["reason"] == "weak_passphrase"
    assert ev.prev_mac == before[-1].mac
    assert "short" not in ev.details.replace("weak_passphrase", "")
    assert ports.audit_heads.read(chains.acme) == ChainHead(chains.acme, ev.seq, ev.mac)
    report = audit_checks.verify_chains(ports)
    assert report.ok, report.problems


def test_installation_chain_exists_after_init(ports):
    [ev] = _chain(ports, audit.INSTALLATION_CHAIN)
    assert (ev.seq, ev.action, ev.outcome, ev.account_id) == (
        1,
        "installation.init",
        "success",
        None,
    )
    assert ports.audit_heads.read(audit.INSTALLATION_CHAIN) == ChainHead(
        audit.INSTALLATION_CHAIN, 1, ev.mac
    )
    report = audit_checks.verify_chains(ports)
    assert report.ok and report.chains == 1 and report.events == 1


def test_head_file_and_head_row_follow_the_last_event(ports, operator, chains):
    for name in (chains.acme, chains.beta, audit.INSTALLATION_CHAIN):
        last = _chain(ports, name)[-1]
        assert ports.audit_heads.read(name) == ChainHead(name, last.seq, last.mac)
        with ports.db.read() as s:
            row = s.get_one(AuditHead, name)
            assert (row.seq, row.mac) == (last.seq, last.mac)
    _import(ports, operator, "beta", "later@beta.example")
    last = _chain(ports, chains.beta)[-1]
    assert last.action == "key.archive"
    assert ports.audit_heads.read(chains.beta) == ChainHead(chains.beta, last.seq, last.mac)


def test_missing_head_file_is_reported(ports, chains):
    path = ports.audit_heads.directory / f"{chains.acme}.head"
    assert path.is_file()
    path.unlink()
    problem = _only_problem(ports, chains.acme)
    last = _chain(ports, chains.acme)[-1]
    assert (problem.seq, problem.event_id) == (last.seq, last.id)
    assert "no chain head" in problem.reason


def test_head_file_that_disagrees_is_reported(ports, chains):
    last = _chain(ports, chains.beta)[-1]
    path = ports.audit_heads.directory / f"{chains.beta}.head"
    path.write_text(json.dumps({"chain": chains.beta, "seq": last.seq, "mac": "cd" * 32}))
    problem = _only_problem(ports, chains.beta)
    assert (problem.seq, problem.event_id) == (last.seq, last.id)
    assert "differs from the head" in problem.reason
