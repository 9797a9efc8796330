"""Online rotation of an account key (services/vault/rotation.py), on SQLite and PostgreSQL:
every data key moves to the new version, key blobs are never touched, a broken run resumes, the
old version is retired only when nothing uses it, and archival and release go on meanwhile."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text, update

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.db.models import Account, AccountKey, EscrowedKey
from certvault.errors import InvalidInput, NotFound
from certvault.services.kernel import keyring
from certvault.services.kernel.duties import DutyRunning, duty
from certvault.services.kernel.ports import open_ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault import master_key_rotation, rotation
from certvault.services.vault.archive import EntryResult, EscrowRequest, archive_entry
from certvault.services.vault.custody import restore_master_key
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from certvault.services.vault.rotation import plan_rotation, rotate_account_key
from certvault.services.vault.verification import verify_escrow
from tests.factories import make_ca, make_cert, make_p12
from tests.functional.helpers import events, import_ec_keys

PW = "rotation-password-1"
# Where both backends run the same statements, SQLite alone (keeps `make test` short).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
CA = make_ca("Rotation CA")


def _p12(index: int) -> tuple[bytes, bytes]:
    """A fresh EC key's PKCS#12 and the key's PKCS#8 DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(key, f"user{index}@example.org", issuer=CA)
    return make_p12(key, cert, PW), keylib.to_pkcs8_der(key)


def _import(ports, operator, count: int, start: int = 0) -> dict[int, bytes]:  # type: ignore[no-untyped-def]
    return import_ec_keys(ports, operator, count, start=start)


def _rows(ports) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        rows = s.execute(
            select(
                EscrowedKey.uuid,
                EscrowedKey.account_key_version,
                EscrowedKey.nonce,
                EscrowedKey.ciphertext,
                EscrowedKey.data_key_nonce,
                EscrowedKey.wrapped_data_key,
            )
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _account_keys(ports) -> dict[int, tuple]:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        rows = s.execute(
            select(AccountKey.version, AccountKey.destroyed_at, AccountKey.wrapped_key)
        ).all()
    return {v: (destroyed is not None, wrapped) for v, destroyed, wrapped in rows}


def _details(event) -> dict:  # type: ignore[no-untyped-def]
    return dict(json.loads(event.details))


def _all_open(ports, operator, keys: int, *, destroyed: int = 0) -> None:  # type: ignore[no-untyped-def]
    """The verification drill opens ``keys`` keys, each matching its certificates, and meets
    ``destroyed`` destroyed ones (a key under a wiped account key would count there)."""
    report = verify_escrow(ports, operator, "acme")
    assert report.ok and (report.keys, report.destroyed) == (keys, destroyed), report


def _released_der(ports, operator, cert_id: int) -> bytes:  # type: ignore[no-untyped-def]
    batch = release_key(ports, operator, "acme", cert_id, passphrase=None, reason="rotation test")
    p12 = read_pkcs12(batch.releases[0].data, batch.generated_passphrase)
    return keylib.to_pkcs8_der(p12.entries[0].key)


def test_rotation_rewraps_every_data_key_and_retires_the_old_version(ports, operator, account):
    keys = _import(ports, operator, 12)
    before = _rows(ports)
    assert {v for v, *_ in before.values()} == {1}

    result = rotate_account_key(ports, operator, "acme", batch_size=5)

    assert (result.rewrapped, result.batches, result.conflicts) == (12, 3, 0)
    assert result.ok and result.retired == (1,) and result.plan.target == 2
    after = _rows(ports)
    assert after.keys() == before.keys()
    for key_uuid, (version, nonce, ciphertext, dk_nonce, wrapped) in after.items():
        old = before[key_uuid]
        assert version == 2
        assert (nonce, ciphertext) == old[1:3]  # the private key's blob is never touched
        assert dk_nonce != old[3] and wrapped != old[4]
    # The old version's wrapped key is gone; the new one is live.
    assert _account_keys(ports)[1] == (True, b"")
    assert _account_keys(ports)[2][0] is False
    _all_open(ports, operator, 12)
    cert_id, der = next(iter(keys.items()))
    assert _released_der(ports, operator, cert_id) == der

    [started, finished] = [e for e in events(ports, rotation.ACTION)]
    assert _details(started)["phase"] == "started" and _details(started)["to_version"] == 2
    assert finished.outcome == "success"
    assert _details(finished)["phase"] == "finished"
    assert _details(finished)["rewrapped"] == 12
    assert _details(finished)["retired_versions"] == [1]
    assert _details(finished)["from_versions"] == [1]

    # Finished: the next run is a rotation of its own, to a third version.
    again = rotate_account_key(ports, operator, "acme")
    assert again.plan.creates_version and again.plan.target == 3 and again.rewrapped == 12
    assert {v for v, *_ in _rows(ports).values()} == {3}
    _all_open(ports, operator, 12)


@SQLITE_ONLY
def test_new_archivals_seal_under_the_new_version(ports, operator, account):
    _import(ports, operator, 3)
    rotate_account_key(ports, operator, "acme")
    _import(ports, operator, 2, start=100)
    assert {v for v, *_ in _rows(ports).values()} == {2}
    _all_open(ports, operator, 5)


class _Crash(Exception):
    pass


def test_a_run_stopped_mid_way_is_resumed_not_restarted(ports, operator, account):
    _import(ports, operator, 9)

    def crash_after_one_batch(_count: int) -> None:
        raise _Crash()

    with pytest.raises(_Crash):
        rotate_account_key(ports, operator, "acme", batch_size=4, on_batch=crash_after_one_batch)
    versions = [v for v, *_ in _rows(ports).values()]
    assert sorted(versions) == [1] * 5 + [2] * 4  # half-way: each row wholly on one version
    plan = plan_rotation(ports, "acme")
    assert not plan.creates_version and plan.target == 2 and plan.pending == {1: 5}

    result = rotate_account_key(ports, operator, "acme", batch_size=4)
    assert not result.plan.creates_version and result.rewrapped == 5
    assert set(_account_keys(ports)) == {1, 2}  # no third version
    assert {v for v, *_ in _rows(ports).values()} == {2}
    _all_open(ports, operator, 9)
    finished = events(ports, rotation.ACTION)[-1]
    assert _details(finished)["resumed"] is True and _details(finished)["retired_versions"] == [1]


@SQLITE_ONLY
def test_a_version_made_but_not_yet_used_is_the_target_of_the_next_run(ports, operator, account):
    # A kill between making the version and the first batch leaves exactly this.
    _import(ports, operator, 3)
    with ports.db.transaction() as s:
        keyring.create_account_key(s, ports, s.scalars(select(Account)).one())
    plan = plan_rotation(ports, "acme")
    assert (plan.creates_version, plan.target, plan.pending, plan.retires) == (
        False,
        2,
        {1: 3},
        (1,),
    )
    result = rotate_account_key(ports, operator, "acme")
    assert result.rewrapped == 3 and result.retired == (1,)
    assert set(_account_keys(ports)) == {1, 2}


@SQLITE_ONLY
def test_all_keys_moved_but_old_version_still_live_only_retires(ports, operator, account):
    # Killed after the last batch and before the retirement: the rerun only retires.
    _import(ports, operator, 2)

    def crash_after_last(_count: int) -> None:
        raise _Crash()

    with pytest.raises(_Crash):
        rotate_account_key(ports, operator, "acme", on_batch=crash_after_last)
    assert {v for v, *_ in _rows(ports).values()} == {2}
    assert _account_keys(ports)[1][0] is False
    result = rotate_account_key(ports, operator, "acme")
    assert (result.rewrapped, result.batches, result.retired) == (0, 0, (1,))
    assert set(_account_keys(ports)) == {1, 2}


@SQLITE_ONLY
def test_a_second_rotation_of_the_same_account_refuses(ports, operator, account):
    _import(ports, operator, 2)
    with ports.db.read() as s:
        account_uuid = s.scalars(select(Account.uuid)).one()
    before = _rows(ports)
    with duty(ports, rotation.duty_name(account_uuid)):
        with pytest.raises(DutyRunning) as refused:
            rotate_account_key(ports, operator, "acme")
    assert refused.value.code == "duty_running"
    # A master-key rotation (or migration) running holds the same lock: the account's waits.
    with duty(ports, master_key_rotation.DUTY), pytest.raises(DutyRunning):
        rotate_account_key(ports, operator, "acme")
    # And an account's rotation running makes a master-key rotation wait.
    with duty(ports, rotation.duty_name(account_uuid)), pytest.raises(DutyRunning):
        master_key_rotation.rotate_master(ports, operator)
    assert _rows(ports) == before and set(_account_keys(ports)) == {1}


@SQLITE_ONLY
def test_destroyed_escrowed_keys_are_skipped(ports, operator, account):
    _import(ports, operator, 3)
    with ports.db.transaction() as s:
        victim = s.scalars(select(EscrowedKey).order_by(EscrowedKey.id)).first()
        assert victim is not None
        victim.destroyed_at = ports.clock()
        victim_uuid = victim.uuid
    before = _rows(ports)[victim_uuid]
    assert plan_rotation(ports, "acme").destroyed_skipped == 1

    result = rotate_account_key(ports, operator, "acme")

    assert result.rewrapped == 2 and result.retired == (1,)
    assert _rows(ports)[victim_uuid] == before  # left exactly as it was
    _all_open(ports, operator, 2, destroyed=1)
    assert _details(events(ports, rotation.ACTION)[-1])["skipped_destroyed"] == 1


@SQLITE_ONLY
def test_an_account_whose_keys_were_destroyed_refuses(ports, operator, account):
    _import(ports, operator, 2)
    with ports.db.transaction() as s:
        s.execute(update(AccountKey).values(destroyed_at=ports.clock()))
    before = _rows(ports)
    for attempt in (
        lambda: rotate_account_key(ports, operator, "acme"),
        lambda: plan_rotation(ports, "acme"),
    ):
        with pytest.raises(keyring.AccountKeyDestroyed) as refused:
            attempt()
        assert refused.value.code == "account_key_destroyed"
        assert "shredded" in refused.value.message
    assert _rows(ports) == before and set(_account_keys(ports)) == {1}


@SQLITE_ONLY
def test_keys_under_a_destroyed_version_are_left_and_do_not_hold_the_rotation(
    ports, operator, account
):
    # After a shredding, a key may still point at a destroyed account-key version: it cannot be
    # opened, so it cannot be moved, and it must not keep the live old version from retiring.
    _import(ports, operator, 3)
    rotate_account_key(ports, operator, "acme")  # v1 retired
    with ports.db.transaction() as s:
        stranded = s.scalars(select(EscrowedKey).order_by(EscrowedKey.id)).first()
        assert stranded is not None
        stranded.account_key_version = 1
        stranded_uuid = stranded.uuid
    before = _rows(ports)[stranded_uuid]
    plan = plan_rotation(ports, "acme")
    assert (plan.creates_version, plan.pending, plan.unopenable) == (True, {2: 2}, 1)

    result = rotate_account_key(ports, operator, "acme")

    assert result.ok and result.finished and result.retired == (2,) and result.rewrapped == 2
    assert _rows(ports)[stranded_uuid] == before
    assert _details(events(ports, rotation.ACTION)[-1])["under_destroyed_versions"] == 1
    _all_open(ports, operator, 2, destroyed=1)  # the drill counts it destroyed, as it is


@SQLITE_ONLY
def test_a_data_key_that_does_not_open_keeps_the_old_version(ports, operator, account):
    _import(ports, operator, 4)
    with ports.db.transaction() as s:
        bad = s.scalars(select(EscrowedKey).order_by(EscrowedKey.id.desc())).first()
        assert bad is not None
        bad.wrapped_data_key = bytes([bad.wrapped_data_key[0] ^ 1]) + bad.wrapped_data_key[1:]
        bad_uuid = bad.uuid

    result = rotate_account_key(ports, operator, "acme")

    assert [(f.escrowed_key_uuid, f.code) for f in result.failures] == [(bad_uuid, "seal_broken")]
    assert result.rewrapped == 3 and result.retired == ()
    assert _account_keys(ports)[1][0] is False  # kept for the key it could not move
    assert _rows(ports)[bad_uuid][0] == 1
    last = events(ports, rotation.ACTION)[-1]
    assert last.outcome == "failure" and _details(last)["failures"] == 1


def test_a_row_changed_under_a_batch_is_not_overwritten(ports, operator, account):
    _import(ports, operator, 1)
    [(key_uuid, (_, _, _, dk_nonce, wrapped))] = _rows(ports).items()
    with ports.db.transaction() as s:
        key_id = s.scalars(select(EscrowedKey.id)).one()
    stale = (key_id, b"\x00" * 12, b"\x01" * 12, b"\x02" * 48)  # a nonce that is not the row's
    written = ports.db.run(
        lambda s: rotation._write(s, held=None, account_id=1, old=1, target=2, updates=[stale])
    )
    assert written == 0 and _rows(ports)[key_uuid][3:] == (dk_nonce, wrapped)
    fresh = (key_id, dk_nonce, b"\x01" * 12, b"\x02" * 48)
    wrong_account = ports.db.run(
        lambda s: rotation._write(s, held=None, account_id=2, old=1, target=2, updates=[fresh])
    )
    assert wrong_account == 0 and _rows(ports)[key_uuid][3:] == (dk_nonce, wrapped)


@SQLITE_ONLY
def test_a_row_read_before_the_rotation_still_opens_after_it(ports, operator, account):
    # PostgreSQL reads each statement afresh: a release may read a key's row, then find its
    # account-key version retired by a rotation that finished in between.
    keys = _import(ports, operator, 1)
    with ports.db.read() as s:
        stale = s.scalars(select(EscrowedKey)).one()
        acme = s.scalars(select(Account)).one()
    rotate_account_key(ports, operator, "acme")
    assert stale.account_key_version == 1
    with ports.db.read() as s:
        assert keyring.open_private_key(s, ports, acme, stale) == next(iter(keys.values()))


def test_bad_input_is_refused_and_changes_nothing(ports, operator, account):
    _import(ports, operator, 1)
    before = _rows(ports)
    for size in (0, -1, rotation.MAX_BATCH + 1, 2**63):
        with pytest.raises(InvalidInput):
            rotate_account_key(ports, operator, "acme", batch_size=size)
    for slug in ("nope", "", "acme\x00", "a" * 10_000, "' OR 1=1 --", "acme/../x"):
        with pytest.raises(NotFound):
            rotate_account_key(ports, operator, slug)
        with pytest.raises(NotFound):
            plan_rotation(ports, slug)
    assert _rows(ports) == before and set(_account_keys(ports)) == {1}


def test_archiving_and_releasing_go_on_during_a_rotation(ports, operator, account):
    keys = _import(ports, operator, 120)
    stop = threading.Event()
    problems: list[str] = []
    archived: dict[int, bytes] = {}
    released = 0

    def archive() -> None:
        n = 1000
        while not stop.is_set():
            data, der = _p12(n)
            try:
                [entry] = import_p12(ports, operator, "acme", data, PW)
                assert entry.client_cert_id is not None, entry.message
                archived[entry.client_cert_id] = der
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(f"archive: {type(exc).__name__} {exc}")
            n += 1

    def release() -> None:
        nonlocal released
        ids = list(keys)
        n = 0
        while not stop.is_set():
            cert_id = ids[n % len(ids)]
            try:
                if _released_der(ports, operator, cert_id) != keys[cert_id]:
                    problems.append(f"release: certificate {cert_id} gave another key")
                released += 1
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(f"release: {type(exc).__name__} {exc}")
            n += 1

    threads = [threading.Thread(target=archive), threading.Thread(target=release)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        result = rotate_account_key(ports, operator, "acme", batch_size=4)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not problems, problems[:5]
    assert archived and released, (len(archived), released)
    assert result.ok and result.retired == (1,)
    assert {v for v, *_ in _rows(ports).values()} == {2}
    report = verify_escrow(ports, operator, "acme")
    assert report.ok and report.keys == len(keys) + len(archived)
    for cert_id, der in list(archived.items())[:3]:
        assert _released_der(ports, operator, cert_id) == der


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_archival_sealing_under_the_old_version_holds_its_retirement(
    ports, operator, account, monkeypatch
):
    # An archival (the enrollment path: one entry, sealed before its audit event) that sealed
    # under v1 before v2 existed, and commits only once the rotation has moved every other key:
    # the retirement waits for it, counts its key, and a second pass moves it. Without the
    # shared lock v1 would be wiped under a key just acknowledged.
    _import(ports, operator, 3)
    sealed, go_on = threading.Event(), threading.Event()
    original = keyring.seal_private_key

    def slow_seal(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = original(*args, **kwargs)
        sealed.set()
        go_on.wait(60)
        return out

    key = ec.generate_private_key(ec.SECP256R1())
    request = EscrowRequest(key=key, certificate=make_cert(key, "late@example.org", issuer=CA))
    late: list[EntryResult] = []

    def archive() -> None:
        with ports.db.transaction() as s:
            late.append(archive_entry(s, ports, get_account(s, "acme"), operator, request))

    monkeypatch.setattr(keyring, "seal_private_key", slow_seal)
    archival = threading.Thread(target=archive)
    archival.start()
    assert sealed.wait(60)
    monkeypatch.setattr(keyring, "seal_private_key", original)
    outcome: list[rotation.RotationResult] = []
    rotating = threading.Thread(
        target=lambda: outcome.append(rotate_account_key(ports, operator, "acme"))
    )
    rotating.start()
    try:
        deadline = time.monotonic() + 60
        while not _waits_for_a_lock(ports):  # the retirement waits for the archival
            assert time.monotonic() < deadline and rotating.is_alive()
            time.sleep(0.05)
        assert archival.is_alive() and not late  # nothing was acknowledged yet
    finally:
        go_on.set()
        archival.join(60)
        rotating.join(60)
    [entry] = late
    [result] = outcome
    assert result.passes == 2 and result.retired == (1,) and result.rewrapped == 4
    assert {v for v, *_ in _rows(ports).values()} == {2}
    _all_open(ports, operator, 4)
    assert entry.client_cert_id is not None
    assert _released_der(ports, operator, entry.client_cert_id) == keylib.to_pkcs8_der(key)


def _waits_for_a_lock(ports) -> bool:  # type: ignore[no-untyped-def]
    with ports.db.engine.connect() as c:
        waiting = c.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE account_keys%'"
            )
        )
    return bool(waiting)


@SQLITE_ONLY
def test_shares_still_restore_the_master_key_after_a_rotation(ports, operator, account, settings):
    # A retired version's wrapped key is wiped: the check of rebuilt shares must pass it by.
    _import(ports, operator, 2)
    rotate_account_key(ports, operator, "acme")
    shares = ports.master_key.export_shares(2, 3)
    shutil.rmtree(settings.effective_master_key_dir)
    fresh = open_ports(settings)
    try:
        assert restore_master_key(fresh, shares[:2]) == 1  # v2; v1 is retired
        _all_open(fresh, operator, 2)
    finally:
        fresh.close()
