"""A vault set up for drills, and clients that archive keys into it over HTTP concurrently
(and, where a drill asks, release them), recording every answer they got or did not get.

The keys are EC P-256 (made in microseconds); their certificates come from one drill CA. A
client that got a 2xx holds an *acknowledged* key: the drill's checks (escrow_checks.py) then
prove it is present, opens, and is the very key that was sent.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certvault.services.access import admins, tokens
from certvault.services.directory import accounts, persons
from tests.conftest import TEST_OPERATOR
from tests.factories import make_ca, make_cert, make_p12, new_key
from tests.functional import cli_env

ACCOUNT = "acme"
P12_PASSWORD = "drill-p12-password"
PRIVILEGES = ["key_vault_download", "certificates_manage", "persons_manage"]
# What a drill may see besides 2xx, by status, when it provokes a fault (never 500).
DATABASE_UNAVAILABLE, STORAGE_FULL = 503, 507


@dataclass(frozen=True)
class DrillVault:
    """Account "acme" (Key Vault on), an administrator "drill" with a bearer token, and one
    person per client (client0@acme.example ...)."""

    token: str
    person_ids: list[int]
    ca: Any = field(repr=False)

    def email(self, client: int) -> str:
        return f"client{client}@acme.example"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def prepare_vault(cli: cli_env.Cli, clients: int) -> DrillVault:
    """Initialize the installation of ``cli`` (schema, master key) and set up the drill's
    account, administrator, token and persons, in-process."""
    ports = cli.ports()
    try:
        accounts.initialize(ports, TEST_OPERATOR)
        accounts.create_account(ports, TEST_OPERATOR, "Acme Corp", ACCOUNT, key_vault_enabled=True)
        admins.create_admin(ports, TEST_OPERATOR, ACCOUNT, "drill", privileges=PRIVILEGES)
        token = tokens.create_token(ports, TEST_OPERATOR, ACCOUNT, "drill").token
        ids = [
            persons.create_person(
                ports,
                TEST_OPERATOR,
                ACCOUNT,
                persons.PersonFields(email=f"client{c}@acme.example"),
            ).id
            for c in range(clients)
        ]
    finally:
        ports.close()
    return DrillVault(token, ids, make_ca("Drill CA"))


@dataclass(frozen=True)
class Upload:
    """One key and its certificate as a p12, for one person."""

    person_id: int
    key: Any = field(repr=False)
    cert: x509.Certificate = field(repr=False)
    p12: bytes = field(repr=False)

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.cert.public_bytes(Encoding.DER)).digest()

    def body(self) -> dict[str, str]:
        return {"p12": base64.b64encode(self.p12).decode(), "password": P12_PASSWORD}


def make_upload(vault: DrillVault, client: int) -> Upload:
    key = new_key("ec256")
    cert = make_cert(key, vault.email(client), issuer=vault.ca)
    return Upload(vault.person_ids[client], key, cert, make_p12(key, cert, P12_PASSWORD))


@dataclass(frozen=True)
class Answer:
    """What one request got: ``status`` None when no answer came (the connection was refused,
    cut, or timed out)."""

    client: int
    upload: Upload | None  # None for a release
    status: int | None
    code: str | int | None = None  # the error code of a non-2xx answer
    message: str | None = None  # the entry's message of a 2xx archival
    cert_id: int | None = None
    retry_after: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def archive_path(upload: Upload, *, compat: bool = False) -> str:
    if compat:
        return f"/api/person/v2/{upload.person_id}/import-key"
    return f"/api/v1/persons/{upload.person_id}/keys"


def post_upload(
    http: httpx.Client, base: str, headers: dict[str, str], client: int, upload: Upload, **kw: Any
) -> Answer:
    """POST one upload (the REST upload, or with ``compat=True`` the SCM import-key)."""
    try:
        r = http.post(base + archive_path(upload, **kw), json=upload.body(), headers=headers)
    except httpx.HTTPError:
        return Answer(client, upload, None)
    return _answer(client, upload, r)


def _answer(client: int, upload: Upload | None, r: httpx.Response) -> Answer:
    try:
        body = r.json()
    except ValueError:
        body = {}
    retry_after = r.headers.get("retry-after")
    if 200 <= r.status_code < 300 and upload is not None:
        [entry] = body["entries"]
        return Answer(client, upload, r.status_code, None, entry["message"], entry["clientCertId"])
    if 200 <= r.status_code < 300:
        return Answer(client, None, r.status_code)
    code = body.get("code") if isinstance(body, dict) else None
    return Answer(client, upload, r.status_code, code, None, None, retry_after)


@dataclass
class ArchivingClients:
    """``count`` threads, each POSTing uploads one after another until stopped.

    ``base_for(client)`` is the server a client talks to; ``next_upload(client, n)`` gives the
    client's n-th upload (by default a fresh key for the client's own person). With
    ``releasers``, that many further threads download the keys acknowledged so far.
    """

    vault: DrillVault
    base_for: Callable[[int], str]
    count: int = 4
    next_upload: Callable[[int, int], Upload | None] | None = None
    compat_for: Callable[[int], bool] = lambda _client: False
    releasers: int = 0
    timeout: float = 30
    seed: int = 0
    answers: list[Answer] = field(default_factory=list)
    releases: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._archive, args=(c,), daemon=True)
            for c in range(self.count)
        ] + [
            threading.Thread(target=self._release, args=(self.count + r,), daemon=True)
            for r in range(self.releasers)
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 10)
            assert not t.is_alive(), "a client hangs"

    def stop_when_done(self, timeout: float) -> None:
        """Wait for clients whose ``next_upload`` runs out, then stop the rest."""
        for t in self._threads[: self.count]:
            t.join(timeout=timeout)
            assert not t.is_alive(), "a client hangs"
        self.stop()

    def acknowledged(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.acknowledged]

    def wait_for(self, acknowledged: int, timeout: float = 60) -> bool:
        """Wait until ``acknowledged`` archivals were answered 2xx (False on timeout)."""
        done = threading.Event()
        for _ in range(int(timeout * 20)):
            if len(self.acknowledged()) >= acknowledged:
                return True
            done.wait(0.05)
        return False

    def _archive(self, client: int) -> None:
        n = 0
        with httpx.Client(timeout=self.timeout) as http:
            while not self._stop.is_set():
                upload = (
                    self.next_upload(client, n)
                    if self.next_upload
                    else make_upload(self.vault, client)
                )
                if upload is None:
                    return
                n += 1
                answer = post_upload(
                    http,
                    self.base_for(client),
                    self.vault.headers,
                    client,
                    upload,
                    compat=self.compat_for(client),
                )
                with self._lock:
                    self.answers.append(answer)
                if answer.status is None or answer.status >= 500:
                    self._stop.wait(0.05)  # a server that is down is not hammered

    def _release(self, client: int) -> None:
        rng = random.Random(self.seed * 1000 + client)
        with httpx.Client(timeout=self.timeout) as http:
            while not self._stop.is_set():
                done = self.acknowledged()
                if not done:
                    self._stop.wait(0.05)
                    continue
                cert_id = rng.choice(done).cert_id
                url = f"{self.base_for(client)}/api/v1/certificates/{cert_id}/key"
                try:
                    r = http.post(
                        url, json={"generate_passphrase": True}, headers=self.vault.headers
                    )
                    answer = _answer(client, None, r)
                except httpx.HTTPError:
                    answer = Answer(client, None, None)
                with self._lock:
                    self.releases.append(answer)
                if answer.status is None or answer.status >= 500:
                    self._stop.wait(0.05)


def statuses(answers: Sequence[Answer]) -> dict[str, int]:
    """How many answers of each status ("none" for no answer), for a drill's report."""
    out: dict[str, int] = {}
    for a in answers:
        key = "none" if a.status is None else str(a.status)
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
