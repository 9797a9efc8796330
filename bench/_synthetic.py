"""Many escrowed keys, fast: rows copied from one key imported through the service, each copy
with a key of its own, sealed the way the service seals it, and written with multi-row INSERTs.

One real PKCS#12 goes in through ``import_p12``; its person, certificate and escrowed-key rows
are the template. Every copy gets a fresh EC P-256 key (one key per record: the vault stores a
public key once per account), its private key sealed by ``keyring.seal_private_key`` under the
account's key, and a certificate made from the template's DER with the serial number, the
public key and the owner's address put in place (all fixed-width, so the DER stays well-formed;
the issuer's signature is not redone, and nothing on the timed paths checks it). Person and
certificate rows carry their MAC from ``seals.seal_mac``, so every row reads back as one
certvault wrote.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from _common import OPERATOR
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.db.models import Account, Certificate, EscrowedKey, Person, new_uuid
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.ports import Ports
from certvault.services.vault.imports import import_p12
from tests.factories import make_ca, make_cert, make_p12

KEYS_PER_PERSON = 2  # a current and an old certificate, as people have
BATCH = 2_000  # keys per transaction
_PASSWORD = "bench-scale-1"
_SERIAL_BASE = 1 << 126  # 16 content bytes, no sign padding, for every serial used here
_TEMPLATE_SERIAL = _SERIAL_BASE + 0x5A5A5A5A5A5A5A5A5A5A5A5A


def email(index: int) -> str:
    """The address of person ``index``: fixed width, so the certificate keeps its length."""
    return f"u{index:08d}@scale.bench.example"


def _serial(value: int) -> bytes:
    return value.to_bytes(16, "big")


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


@dataclass(frozen=True)
class Population:
    """The synthetic persons, and their certificates (``KEYS_PER_PERSON`` each, in order)."""

    person_ids: range
    certificate_ids: range

    def certificates_of(self, person_index: int) -> list[int]:
        first = self.certificate_ids[person_index * KEYS_PER_PERSON]
        return list(range(first, first + KEYS_PER_PERSON))


@dataclass
class _Template:
    person: dict[str, Any]
    certificate: dict[str, Any]
    key: dict[str, Any]
    point: bytes


def _row(session: Session, table: Any, row_id: int) -> dict[str, Any]:
    return dict(
        session.connection().execute(select(table).where(table.c.id == row_id)).one()._mapping
    )


def _template(ports: Ports) -> _Template:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(key, email(0), issuer=make_ca("Bench Scale CA"), serial=_TEMPLATE_SERIAL)
    data = make_p12(key, cert, _PASSWORD)
    [entry] = import_p12(ports, OPERATOR, "bench", data, _PASSWORD)
    assert entry.client_cert_id is not None, entry.message
    with ports.db.read() as s:
        certificate = _row(s, Certificate.__table__, entry.client_cert_id)
        person = _row(s, Person.__table__, certificate["person_id"])
        escrowed = _row(s, EscrowedKey.__table__, certificate["escrowed_key_id"])
    der = certificate["der"]
    assert der.count(_serial(_TEMPLATE_SERIAL)) == 1 and der.count(_point(key)) == 1
    return _Template(person, certificate, escrowed, _point(key))


def _next_ids(session: Session) -> tuple[int, int, int]:
    def after(model: Any) -> int:
        return int(session.scalar(select(func.max(model.id))) or 0) + 1

    return after(Person), after(EscrowedKey), after(Certificate)


def _copies(
    session: Session, ports: Ports, t: _Template, first: int, count: int, ids: tuple[int, int, int]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, row) for persons ``first`` .. ``first + count - 1`` and their keys."""
    connection = session.connection()
    account = session.get_one(Account, t.person["account_id"])
    person_spec = seals.sealed_table(Person)
    cert_spec = seals.sealed_table(Certificate)
    assert person_spec is not None and cert_spec is not None
    old_email = email(0).encode()
    person_id, key_id, cert_id = ids
    for index in range(first, first + count):
        address = email(index)
        person = t.person | {"id": person_id, "uuid": new_uuid(), "email": address}
        person["mac"] = seals.seal_mac(connection, ports, person_spec, SimpleNamespace(**person))
        yield "persons", person
        for _ in range(KEYS_PER_PERSON):
            key = ec.generate_private_key(ec.SECP256R1())
            spki = keylib.spki_sha256(key.public_key())
            key_uuid = new_uuid()
            sealed = keyring.seal_private_key(
                session, ports, account, key_uuid, spki, keylib.to_pkcs8_der(key)
            )
            yield (
                "escrowed_keys",
                t.key
                | {
                    "id": key_id,
                    "uuid": key_uuid,
                    "spki_sha256": spki,
                    "nonce": sealed.nonce,
                    "ciphertext": sealed.ciphertext,
                    "data_key_nonce": sealed.data_key_nonce,
                    "wrapped_data_key": sealed.wrapped_data_key,
                    "account_key_version": sealed.account_key_version,
                },
            )
            serial = _SERIAL_BASE + cert_id
            der = (
                t.certificate["der"]
                .replace(_serial(_TEMPLATE_SERIAL), _serial(serial))
                .replace(t.point, _point(key))
                .replace(old_email, address.encode())
            )
            cert = t.certificate | {
                "id": cert_id,
                "uuid": new_uuid(),
                "person_id": person_id,
                "escrowed_key_id": key_id,
                "der": der,
                "sha256": hashlib.sha256(der).digest(),
                "sha1_hex": hashlib.sha1(der).hexdigest(),  # noqa: S324 - as add_certificate
                "md5_hex": hashlib.md5(der).hexdigest(),  # noqa: S324
                "serial": format(serial, "x"),
                "subject": t.certificate["subject"].replace(email(0), address),
                "emails": address,
                "spki_sha256": spki,
            }
            cert["mac"] = seals.seal_mac(connection, ports, cert_spec, SimpleNamespace(**cert))
            yield "certificates", cert
            key_id += 1
            cert_id += 1
        person_id += 1


def _insert(session: Session, rows: Iterator[tuple[str, dict[str, Any]]]) -> None:
    # In the order the foreign keys need.
    tables: list[Any] = [Person.__table__, EscrowedKey.__table__, Certificate.__table__]
    by_table: dict[str, list[dict[str, Any]]] = {table.name: [] for table in tables}
    for name, row in rows:
        by_table[name].append(row)
    connection = session.connection()
    for table in tables:
        connection.execute(table.insert(), by_table[table.name])


def populate(ports: Ports, keys: int) -> Population:
    """``keys`` escrowed keys in all (rounded up to whole persons), the template among them."""
    template = _template(ports)
    persons = max(1, -(-keys // KEYS_PER_PERSON)) - 1  # the template's person has one key
    with ports.db.read() as s:
        start = _next_ids(s)
    per_batch = BATCH // KEYS_PER_PERSON
    for first in range(1, persons + 1, per_batch):
        count = min(per_batch, persons + 1 - first)

        def batch(s: Session, first: int = first, count: int = count) -> None:
            person_id, key_id, cert_id = _next_ids(s)
            _insert(s, _copies(s, ports, template, first, count, (person_id, key_id, cert_id)))

        ports.db.run(batch)
    if not ports.db.is_sqlite:
        with ports.db.transaction() as s:
            for table in ("persons", "escrowed_keys", "certificates"):
                s.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
        with ports.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("ANALYZE persons, escrowed_keys, certificates"))
    return Population(
        range(start[0], start[0] + persons),
        range(start[2], start[2] + persons * KEYS_PER_PERSON),
    )
