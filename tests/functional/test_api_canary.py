"""Secrets are never echoed by the HTTP APIs (DESIGN.md §5, invariant 7), on every endpoint.

One recognizable secret (the canary of test_canary) is sent as every password, passphrase, p12
password, header password, token, base64 payload and free-text field, down every error path of
every operation in the OpenAPI schema (the own API and the SCM-compatible one) and of the public
enrollment pages: 401 (as the token, as the header password), 403, 404, 409, 413, 422 (malformed
JSON, wrong types, bad values and queries), 429, and forced 500s whose exception message carries
it. Then it is searched for everywhere: every response body and header, every log record of every
logger at DEBUG (certvault.access, the error handlers, uvicorn and FastAPI included), every cell of
every table (audit events and the mail outbox included) and every file under CERTVAULT_HOME.

Every request asserts the error it expects, so the test cannot pass by not reaching a path.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from certvault.db.models import AuditEvent, MailMessage
from certvault.services.access import admins, tokens
from certvault.services.access import credentials as credentials_service
from certvault.services.kernel.actors import Actor
from certvault.services.pki import agents, enrollment_forms
from certvault.services.vault import release
from certvault.web.api import agent as agent_api
from certvault.web.app import body_limit
from tests import cmc_builder as cmc
from tests.factories import make_p12, pool_key
from tests.functional.api_fixtures import (  # noqa: F401 - `api`
    ALL_PRIVILEGES,
    P12_PASSWORD,
    ApiWorld,
    api_fixture,
)
from tests.functional.test_canary import CANARY, VARIANTS, _assert_clean, _record_texts, _stored

PASSPHRASE = "a-good-long-passphrase"
ROBOT_PASSWORD = "robot-password-0123456789"
ACCESS_CODE = "the-right-access-code"
MISSING_ID = 999_999
# The test's own HTTP client logs every URL it requests: the caller's log, not certvault's.
CLIENT_LOGGERS = ("httpx", "httpx2", "httpcore")
ROLES = {
    "person_id": "person",
    "personId": "person",
    "certificate_id": "cert",
    "certId": "cert",
    "email": "email",
    "form_id": "form",
}


@dataclass
class Operation:
    method: str
    path: str
    params: list[dict[str, Any]]
    body: dict[str, Any] | None  # the JSON schema of the request body

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def scm(self) -> bool:
        return any(p["in"] == "header" and p["name"] == "password" for p in self.params)

    @property
    def authenticated(self) -> bool:
        return self.path.startswith("/api/")

    @property
    def agent(self) -> bool:
        """An MS agent's operation: agent tokens open it, administrators' tokens do not."""
        return self.path.startswith("/api/v1/agent/")


@dataclass
class World:
    api: ApiWorld
    ids: dict[str, tuple[Any, Any]]  # role -> (an object the callers see, a missing one)
    root: str  # a token of an account administrator with every privilege and scope
    upload_only: str  # the same administrator's token with the scope keys:upload alone
    read_only: str  # ... with the scope read alone
    agent: str  # an MS agent's token
    spec: dict[str, Any]

    @property
    def client(self) -> Any:
        return self.api.client


@pytest.fixture
def world(api: ApiWorld, operator: Actor) -> World:
    ports = api.ports
    ports.settings.downloads_per_hour_ip = 1_000_000  # the per-administrator limit is driven
    admins.create_admin(ports, operator, "acme", "root", privileges=ALL_PRIVILEGES)
    admins.create_admin(
        ports,
        operator,
        "acme",
        "robot",
        privileges=ALL_PRIVILEGES,
        api_only=True,
        password=ROBOT_PASSWORD,
    )
    form = enrollment_forms.create_form(
        ports, operator, "acme", slug="staff", profile="smime", access_code=ACCESS_CODE
    )
    w = World(
        api=api,
        ids={
            "person": (api.alice.person_id, MISSING_ID),
            "cert": (api.alice.cert_ids[1], MISSING_ID),
            "email": (api.alice.email, "nobody@acme.example"),
            "form": (form.id, MISSING_ID),
        },
        root=tokens.create_token(ports, operator, "acme", "root").token,
        upload_only=tokens.create_token(
            ports, operator, "acme", "root", scopes=["keys:upload"]
        ).token,
        read_only=tokens.create_token(ports, operator, "acme", "root", scopes=["read"]).token,
        agent=agents.create_agent(ports, operator, "acme", "dc1").token,
        spec=api.client.get("/openapi.json").json(),
    )
    # One release that succeeds (without the canary): the audit log and the mail outbox then
    # hold rows, so that finding the canary in neither means something.
    r = w.client.post(
        f"/api/v1/certificates/{api.alice.cert_ids[1]}/key",
        headers=_bearer(w.root),
        json={"passphrase": PASSPHRASE, "reason": "routine check"},
    )
    assert r.status_code == 200, r.text
    return w


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tokens(w: World, op: Operation) -> tuple[str, str, set[int]]:
    """A token that may call ``op``, one that may not, and what the latter is answered."""
    if op.agent:
        return w.agent, w.root, {401}
    narrow = w.read_only if _is_upload(op) else w.upload_only
    return w.root, narrow, {403} if op.method in ("GET", "HEAD") else {403, 422}


def _operations(spec: dict[str, Any]) -> Iterator[Operation]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            yield Operation(method.upper(), path, op.get("parameters", []), body)


# --- bodies made from the schema ----------------------------------------------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf"):
        if key in schema and "properties" not in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return _resolve(spec, options[0])
    return schema


# A base64 payload (the p12 field) made of the canary, as it reaches the services; the text of
# the payload itself is searched for too (B64_NEEDLE).
B64_PAYLOAD = base64.b64encode(CANARY.encode() * 4).decode()
B64_NEEDLE = B64_PAYLOAD[:24]


def _canary_value(spec: dict[str, Any], schema: dict[str, Any], name: str = "") -> Any:
    """A value of the schema's type with the canary in every string; enums keep a valid value."""
    schema = _resolve(spec, schema)
    if name == "p12":
        return B64_PAYLOAD
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            key: _canary_value(spec, sub, key) for key, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [_canary_value(spec, schema.get("items", {}))]
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "boolean":
        return False
    if kind == "number":
        return 1
    limit = schema.get("maxLength", len(CANARY))
    assert limit >= 13, schema  # the canary's needle sits in its first 13 characters
    return CANARY[:limit]


def _wrong_types(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """Every field of the body as a list or object carrying the canary."""
    schema = _resolve(spec, schema)
    names = list(schema.get("properties", {}))
    return {name: ([CANARY] if i % 2 else {"x": CANARY}) for i, name in enumerate(names)}


# --- the test -----------------------------------------------------------------------------------


def _log_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("certvault", "certvault.access", "certvault.web", "uvicorn", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        # Libraries that set their own level (SQLAlchemy sets WARN) are turned up too.
        if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG:
            caplog.set_level(logging.DEBUG, logger=name)


class Sender:
    """Sends requests, checks each answers as expected, and keeps all it answered."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.found: list[tuple[str, str | bytes]] = []
        self.statuses: Counter[int] = Counter()

    def __call__(self, label: str, method: str, path: str, expect: set[int], **kw: Any) -> Any:
        r = self.w.client.request(method, path, **kw)
        assert r.status_code in expect, (label, method, path, r.status_code, r.text[:300])
        self.found.append((f"{label}: {method} {path} body", r.content))
        self.found.append((f"{label}: {method} {path} headers", json.dumps(dict(r.headers))))
        self.statuses[r.status_code] += 1
        return r


def _path(w: World, op: Operation, which: int) -> str:
    def value(match: re.Match[str]) -> str:
        return str(w.ids[ROLES[match.group(1)]][which])

    return re.sub(r"\{(\w+)\}", value, op.path)


VISIBLE, MISSING = 0, 1


def _drive_every_operation(w: World, send: Sender) -> int:
    spec = w.spec
    driven = 0
    for op in _operations(spec):
        if not op.authenticated:
            continue
        driven += 1
        body = _canary_value(spec, op.body) if op.body else None
        json_kw = {"json": body} if body is not None else {}
        visible = _path(w, op, VISIBLE)
        label = op.label

        # 401: the canary as the bearer token, as a token of ours, as a Basic password.
        for auth in (f"Bearer {CANARY}", f"Bearer cvt_{CANARY}", "Basic " + _basic(CANARY)):
            send(
                f"{label} 401",
                op.method,
                visible,
                {401},
                headers={"Authorization": auth},
                **json_kw,
            )
        if op.scm:
            # The commercial API's header credentials with the canary as password (the login
            # attempts are rate-limited: 429 once over the limit).
            headers = {"login": "robot", "password": CANARY, "customerUri": "acme"}
            send(f"{label} 401 header", op.method, visible, {401, 429}, headers=headers, **json_kw)

        # 403: a token without the scope the operation needs (a service may refuse a bad
        # value first: 422); for an agent's operation, an administrator's token (401).
        allowed, token, refused = _tokens(w, op)
        if op.method in ("GET", "HEAD"):
            send(f"{label} 403", op.method, visible, refused, headers=_bearer(token))
        else:
            send(f"{label} 403", op.method, visible, refused, headers=_bearer(token), **json_kw)

        # 404: ids that do not exist (an upload's canary payload may be refused before, 422;
        # a list by address is empty for an unknown one).
        if "{" in op.path:
            send(
                f"{label} 404",
                op.method,
                _path(w, op, MISSING),
                {200} if "/byPersonEmail/" in op.path else {404, 422},
                headers=_bearer(w.root),
                **json_kw,
            )

        # 422: query parameters with the canary (integers among them: never valid).
        query = {p["name"]: CANARY for p in op.params if p["in"] == "query"}
        if query and any(_is_integer(spec, p) for p in op.params if p["in"] == "query"):
            send(
                f"{label} 422 query",
                op.method,
                visible,
                {422},
                headers=_bearer(w.root),
                params=query,
            )

        if op.body is None:
            continue
        root = _bearer(allowed)
        # 422: malformed JSON, wrong types, a body of the wrong shape.
        truncated = b'{"password": "' + CANARY.encode() + b'", "passphrase": "' + CANARY.encode()
        send(
            f"{label} 422 malformed",
            op.method,
            visible,
            {422},
            headers={**root, "Content-Type": "application/json"},
            content=truncated,
        )
        send(
            f"{label} 422 types",
            op.method,
            visible,
            {422},
            headers=root,
            json=_wrong_types(spec, op.body),
        )
        for shape in ([CANARY], CANARY, 5):
            send(f"{label} 422 shape", op.method, visible, {422}, headers=root, json=shape)

        # 413: the canary over the size limit.
        padding = CANARY * (body_limit(visible) // len(CANARY) + 1)
        send(
            f"{label} 413",
            op.method,
            visible,
            {413},
            headers=root,
            json={**(body if isinstance(body, dict) else {}), "padding": padding},
        )
    return driven


def _enums(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    resolved = _resolve(spec, schema)
    return "enum" in resolved or "const" in resolved


def _client_chosen_names(w: World, send: Sender) -> int:
    """The canary where the client chooses a name or a value of a fixed set: as a key of the
    body, as a key where a field's value belongs, as a query parameter's name (plain, and with
    a control character, which is refused), as every value of an enumeration. A validation
    error may name our own fields; none of these."""
    spec = w.spec
    driven = 0
    for op in _operations(spec):
        if not op.authenticated:
            continue
        driven += 1
        visible, label = _path(w, op, VISIBLE), op.label
        body = _canary_value(spec, op.body) if op.body else None
        json_kw = {"json": body} if body is not None else {}
        # Under a token without the operation's scope, as for 403 above: a body that gets past
        # validation (the SCM API ignores unknown fields) is refused before it does anything.
        allowed, token, expect = _tokens(w, op)
        root, narrow = _bearer(allowed), _bearer(token)
        send(
            f"{label} query name",
            op.method,
            visible,
            expect,
            headers=narrow,
            params={CANARY: CANARY},
            **json_kw,
        )
        send(
            f"{label} query name control",
            op.method,
            visible,
            {422},
            headers=narrow,
            params={CANARY + "\x1b": CANARY},
            **json_kw,
        )
        for param in op.params:
            if param["in"] == "query" and _enums(spec, param.get("schema", {})):
                send(
                    f"{label} query enum",
                    op.method,
                    visible,
                    {422},
                    headers=root,
                    params={param["name"]: CANARY},
                )
        if not isinstance(body, dict):
            continue
        own = op.path.startswith("/api/v1/")
        send(
            f"{label} body key",
            op.method,
            visible,
            {422} if own else expect,
            headers=root if op.agent else narrow,
            json={**body, CANARY: CANARY, "x" + CANARY: {CANARY: [CANARY]}},
        )
        nested = {name: {CANARY: {CANARY: CANARY}} for name in body}
        send(f"{label} nested key", op.method, visible, {422}, headers=root, json=nested)
        schema = _resolve(spec, op.body)
        for name, sub in schema.get("properties", {}).items():
            options = [_resolve(spec, o) for o in sub.get("anyOf", [sub])]
            if any(_enums(spec, o) for o in options):
                send(
                    f"{label} enum {name}",
                    op.method,
                    visible,
                    {422},
                    headers=root,
                    json={**body, name: CANARY},
                )
    return driven


def _is_upload(op: Operation) -> bool:
    return op.method == "POST" and op.path.endswith(("/keys", "/import-key"))


def _is_integer(spec: dict[str, Any], param: dict[str, Any]) -> bool:
    return _resolve(spec, param.get("schema", {})).get("type") == "integer"


def _basic(password: str) -> str:
    return base64.b64encode(f"robot:{password}".encode()).decode()


def _agent_refusals(w: World, send: Sender) -> None:
    """An agent's request that is read, refused and recorded, with the canary in every field the
    agent fills in: the trail and the audit log keep none of it."""
    key = pool_key("rsa2048-1")
    request = cmc.build_archival_request(key, cmc.exchange_certificate(key))
    requester = {"upn": CANARY, "email": CANARY}
    for body, expect in (
        ({"request": base64.b64encode(request).decode(), "template": CANARY}, {404}),
        ({"request": CANARY, "template": "EFS"}, {422}),
    ):
        send(
            "agent refusal",
            "POST",
            "/api/v1/agent/requests",
            expect,
            headers=_bearer(w.agent),
            json={**body, "requester": requester},
        )


def _handcrafted(w: World, send: Sender) -> None:
    """Error paths that need a particular body: bad values of secrets, conflicts, limits."""
    api, root = w.api, _bearer(w.root)
    alice, new = api.alice.person_id, api.alice.cert_ids[1]
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    locked_elsewhere = make_p12(api.alice.keys[1], api.alice.certs[1], P12_PASSWORD)
    releases = [
        (f"/api/v1/certificates/{new}/key", "encryption_type"),
        (f"/api/v1/persons/{alice}/keys/download", "encryption_type"),
        (f"/api/smime/v1/keystore/{new}", "encryptionType"),
        (f"/api/smime/v2/keystore/{new}", "encryptionType"),
    ]
    # 422: passphrases too weak, an encryption named by the canary, an over-long reason.
    for path, enc in releases:
        for name, variant in VARIANTS.items():
            send(
                f"weak passphrase {name}",
                "POST",
                path,
                {422},
                headers=root,
                json={"passphrase": variant},
            )
        send(
            "encryption",
            "POST",
            path,
            {422},
            headers=root,
            json={"passphrase": CANARY, enc: CANARY},
        )
        send(
            "long reason",
            "POST",
            path,
            {422},
            headers=root,
            json={"passphrase": CANARY, "reason": CANARY * 30},
        )
    # 422: the p12's password, a payload that is no p12, a payload that is no base64.
    uploads = [f"/api/v1/persons/{alice}/keys"] + [
        f"/api/person/{v}/{alice}/import-key" for v in ("v1", "v2")
    ]
    for path in uploads:
        for p12, password in (
            (b64(locked_elsewhere), CANARY),
            (b64(CANARY.encode() * 40), CANARY),
            ("!" + CANARY, CANARY),
            (b64(locked_elsewhere)[:-40] + CANARY, P12_PASSWORD),
        ):
            send(
                "bad upload",
                "POST",
                path,
                {422},
                headers=root,
                json={"p12": p12, "password": password},
            )
    # 422: values that are not addresses, CSRs or codes.
    for path in ("/api/v1/persons", "/api/person/v1", "/api/person/v2"):
        send("bad email", "POST", path, {422}, headers=root, json={"email": CANARY})
    send(
        "bad csr",
        "POST",
        "/api/v1/certificates/enroll",
        {422},
        headers=root,
        json={"csr": CANARY, "profile": "smime", "email": api.alice.email},
    )
    for v in ("v1", "v2"):
        send(
            "bad csr",
            "POST",
            f"/api/smime/{v}/enroll",
            {422},
            headers=root,
            json={"csr": CANARY, "certType": "smime", "email": api.alice.email},
        )

    # 409: what exists already, with the canary in the free text and the access code.
    send(
        "person exists",
        "POST",
        "/api/v1/persons",
        {409},
        headers=root,
        json={"email": api.alice.email, "first_name": CANARY, "last_name": CANARY},
    )
    for v in ("v1", "v2"):
        send(
            "person exists",
            "POST",
            f"/api/person/{v}",
            {409},
            headers=root,
            json={"email": api.alice.email, "firstName": CANARY, "commonName": CANARY},
        )
    send(
        "form exists",
        "POST",
        "/api/v1/forms",
        {409},
        headers=root,
        json={"slug": "staff", "profile": "smime", "access_code": CANARY, "name": CANARY},
    )
    send("person has certificates", "DELETE", f"/api/person/v1/{alice}", {409}, headers=root)
    keyless = api.keyless_cert_id
    send("revoke", "POST", f"/api/smime/v1/revoke/{keyless}", {204}, headers=root, json={})
    for path in ("revoke", "revoke/order"):
        for v in ("v1", "v2"):
            send(
                "revoked already",
                "POST",
                f"/api/smime/{v}/{path}/{keyless}",
                {409},
                headers=root,
                json={"reason": CANARY},
            )

    # 429: the download limit per administrator, every release path.
    api.ports.settings.downloads_per_hour_admin = 1
    for path, _ in releases:
        body = {"passphrase": CANARY, "reason": CANARY}
        r = send("download limit", "POST", path, {429}, headers=root, json=body)
        assert int(r.headers["retry-after"]) >= 1
    # 429: header logins with the canary as password, past the limit per login.
    for _ in range(api.ports.settings.logins_per_minute_login + 1):
        headers = {"login": "robot", "password": CANARY, "customerUri": "acme"}
        last = send("login limit", "GET", "/api/person/v1", {401, 429}, headers=headers)
    assert last.status_code == 429

    # The public enrollment pages: the canary as access code, one-time code, Secret ID and
    # passphrase; without a CSRF token, with a wrong access code, with a wrong code.
    page = w.client.get("/enroll/acme/staff")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    secrets = {
        "access_code": CANARY,
        "code": CANARY,
        "secret_id": CANARY,
        "passphrase_choice": "own",
        "passphrase": CANARY,
        "passphrase_confirm": CANARY + "-again",
        "key_type": "ec256",
        "email": "someone@example.org",
    }
    for step in ("code", "enroll"):
        path = f"/enroll/acme/staff/{step}"
        send("page without csrf", "POST", path, {403}, data=secrets)
        send("page", "POST", path, {403, 422}, data={**secrets, "csrf_token": token.group(1)})
        # The canary as the name of a field the page does not have; with a control character
        # in that name, the page refuses the form.
        for name, expect in ((CANARY, {403, 422}), (CANARY + "\x1b", {422})):
            fields = {**secrets, name: CANARY, "csrf_token": token.group(1)}
            send("page field name", "POST", path, expect, data=fields)
        missing = f"/enroll/acme/no-such-form/{step}"
        send(
            "page unknown form",
            "POST",
            missing,
            {404},
            data={**secrets, "csrf_token": token.group(1)},
        )


def _forced_errors(w: World, send: Sender, monkeypatch: pytest.MonkeyPatch) -> None:
    """500s whose exception message carries the canary: in authentication, for every
    operation, and inside a service."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"internal failure with {CANARY} in its message")

    with monkeypatch.context() as m:
        m.setattr(tokens, "authenticate", boom)
        m.setattr(credentials_service, "authenticate_password", boom)
        m.setattr(agent_api, "authenticate_agent", boom)
        for op in _operations(w.spec):
            if not op.authenticated:
                continue
            body = _canary_value(w.spec, op.body) if op.body else None
            kw = {"json": body} if body is not None else {}
            send(
                f"{op.label} 500",
                op.method,
                _path(w, op, VISIBLE),
                {500},
                headers=_bearer(w.root),
                **kw,
            )
            if op.scm:
                headers = {"login": "robot", "password": CANARY, "customerUri": "acme"}
                send(
                    f"{op.label} 500 header",
                    op.method,
                    _path(w, op, VISIBLE),
                    {500},
                    headers=headers,
                    **kw,
                )
    w.api.ports.settings.downloads_per_hour_admin = 1_000_000
    with monkeypatch.context() as m:
        m.setattr(release, "release_keys", boom)
        path = f"/api/v1/certificates/{w.api.alice.cert_ids[1]}/key"
        r = send(
            "service 500", "POST", path, {500}, headers=_bearer(w.root), json={"passphrase": CANARY}
        )
        assert r.json() == {"code": "internal", "description": "Internal error."}


def test_no_error_path_of_any_endpoint_echoes_the_canary(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    _log_everything(caplog)
    send = Sender(w)

    driven = _drive_every_operation(w, send)
    assert driven == sum(1 for op in _operations(w.spec) if op.authenticated) > 40
    assert _client_chosen_names(w, send) == driven
    _handcrafted(w, send)
    _agent_refusals(w, send)
    _forced_errors(w, send, monkeypatch)

    # Every kind of error was met.
    assert {401, 403, 404, 409, 413, 422, 429, 500} <= set(send.statuses), send.statuses
    records = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    names = {r.name for r in records}
    # The logs were on: the access log, the error handlers, and SQL with its parameters.
    assert {"certvault.access", "certvault.web"} <= names, names
    assert any(name.startswith("sqlalchemy.engine") for name in names), names
    assert any(r.levelno >= logging.ERROR for r in records)  # the 500s were logged
    with w.api.ports.db.read() as s:
        refused = s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.outcome == "refused")
        )
        mail = s.scalar(select(func.count()).select_from(MailMessage))
    assert refused and refused > 50 and mail, (refused, mail)

    found = list(send.found)
    for record in records:
        found += [(f"log {record.name}", text) for text in _record_texts(record)]
    settings = w.api.ports.settings
    found += _stored(settings.effective_database_url, settings.home_dir)
    _assert_clean(found)
    in_base64 = [label for label, value in found if _has_b64_needle(value)]
    assert not in_base64, f"the canary's base64 payload shows in: {in_base64}"


def _has_b64_needle(value: str | bytes) -> bool:
    if isinstance(value, bytes):
        return B64_NEEDLE.encode() in value
    return B64_NEEDLE in "".join(value.split())
