"""Control characters are refused where text comes in (DESIGN.md §5, invariant 5): in every text
field of every request body of the own API and the SCM-compatible one, in every query and path
parameter, and in every field of every form of the console and the enrollment pages. Each
answers 422 (the pages their 4xx page), says why, and stores nothing; never 500, on SQLite and on
PostgreSQL, which cannot store NUL at all.

The fields are found, not listed: the bodies and parameters from the OpenAPI document, the form
fields from the pages as they are served. A new field is covered without touching this file.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from certvault.services.access import admins, tokens
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.pki import agents, enrollment_forms
from certvault.web.app import create_app
from certvault.web.control_characters import has_control_characters
from tests.functional import smtp_server as smtp
from tests.functional.api_fixtures import ALL_PRIVILEGES, ApiWorld, api_fixture  # noqa: F401
from tests.functional.console_fixtures import (  # noqa: F401 - `console`
    PASSWORD,
    ConsoleWorld,
    console_fixture,
)
from tests.functional.smtp_server import SmtpServer

# The enrollment form and an SMTP server to send its codes to, for every test here.
from tests.functional.test_enrollment import ACCESS, acme, settings  # noqa: F401

smtp_server = smtp.smtp_server  # the fixture

# One of each kind: C0 (NUL, escape), DEL, C1 (NEL). Forms and URLs cannot carry a lone
# surrogate (it has no UTF-8); JSON can, as an escape.
CONTROLS = {"NUL": "\x00", "ESC": "\x1b", "DEL": "\x7f", "NEL": "\x85"}
SURROGATE = "\ud800"
RULE = "must not contain control characters"
PAGE_RULE = "holds a control character"
# The fields of the APIs that hold several lines by nature; every other text field holds one.
MULTILINE = {"csr", "p12", "reason", "comments", "request"}  # request: an agent's CMC, PEM
# Rows that change on every authenticated request (last use of a token, session or agent).
VOLATILE = {"api_tokens", "web_sessions", "agents"}  # agents: their last contact


def _rows(ports: Ports) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table but the volatile ones: "nothing is stored" is checked on it."""
    engine = create_engine(ports.settings.effective_database_url)
    found: dict[str, list[tuple[str, ...]]] = {}
    try:
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                if table not in VOLATILE:
                    rows = conn.execute(text(f'SELECT * FROM "{table}"'))
                    found[table] = sorted(tuple(map(repr, row)) for row in rows)
    finally:
        engine.dispose()
    return found


def test_the_rule():
    for code in range(0x20):
        assert has_control_characters(f"a{chr(code)}b")
    for c in ("\x7f", "\x80", "\x85", "\x9f", SURROGATE, "\udfff"):
        assert has_control_characters(f"a{c}b")
    for c in ("\t", "\n", "\r"):
        assert has_control_characters(f"a{c}b") and not has_control_characters(
            f"a{c}b", multiline=True
        )
    assert has_control_characters("a\x00b", multiline=True)
    for fine in ("Zoë Ørsted", "\xa0non-breaking", "名前", "emoji 🔑", "a b", ""):
        assert not has_control_characters(fine)


# --- the APIs: every text field of every request body ------------------------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _options(spec: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a field (``str | None`` is an anyOf in OpenAPI)."""
    schema = _resolve(spec, schema)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives is None or "properties" in schema:
        return [schema]
    return [_resolve(spec, s) for s in alternatives if s.get("type") != "null"]


def _valid(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A value the schema accepts, with every property of every object present."""
    schema = _options(spec, schema)[0]
    if "properties" in schema:
        return {name: _valid(spec, sub) for name, sub in schema["properties"].items()}
    if "enum" in schema or "const" in schema:
        return schema["enum"][0] if "enum" in schema else schema["const"]
    kind = schema.get("type")
    if kind == "array":
        return [_valid(spec, schema["items"])]
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "boolean":
        return False
    assert kind == "string", schema
    return "a" * max(int(schema.get("minLength", 1)), 1)


def _text_fields(
    spec: dict[str, Any], schema: dict[str, Any], path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], bool]]:
    """The path of every text leaf of a body, and whether it is one of a fixed set of values."""
    options = _options(spec, schema)
    if any(o.get("type") == "string" for o in options):
        yield path, all("enum" in o for o in options if o.get("type") == "string")
        return
    first = options[0]
    for name, sub in first.get("properties", {}).items():
        yield from _text_fields(spec, sub, (*path, name))
    if first.get("type") == "array":
        yield from _text_fields(spec, first["items"], (*path, 0))


def _with(body: Any, path: tuple[str | int, ...], value: str) -> Any:
    changed = copy.deepcopy(body)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


def _where(path: tuple[str | int, ...]) -> str:
    """How the answer names a field: a list of texts by its own name, an item of a list of
    objects by its position."""
    steps = list(path)
    while steps and isinstance(steps[-1], int):
        steps.pop()
    return ".".join(map(str, steps))


@dataclass
class Api:
    world: ApiWorld
    token: str  # an account administrator's: every privilege, every scope
    spec: dict[str, Any]
    form_id: int
    agent_token: str  # an MS agent's: the only credential the agent endpoints take

    @property
    def client(self) -> TestClient:
        return self.world.client

    def ids(self) -> dict[str, Any]:
        alice = self.world.alice
        return {
            "person_id": alice.person_id,
            "personId": alice.person_id,
            "certificate_id": alice.cert_ids[1],
            "certId": alice.cert_ids[1],
            "email": alice.email,
            "form_id": self.form_id,
        }

    def operations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for path, item in self.spec["paths"].items():
            if path.startswith("/api/"):
                for method, op in item.items():
                    yield method.upper(), path, op

    def url(self, path: str, override: dict[str, str] | None = None) -> str:
        values = {**{k: str(v) for k, v in self.ids().items()}, **(override or {})}
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)

    def send(self, method: str, url: str, body: Any = None, **kw: Any) -> Any:
        token = self.agent_token if url.startswith("/api/v1/agent/") else self.token
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            # Escaped as JSON does it: a lone surrogate travels as \\ud800.
            kw["content"] = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.client.request(method, url, headers=headers, **kw)


@pytest.fixture
def api_world(api: ApiWorld, operator: Actor) -> Api:
    admins.create_admin(api.ports, operator, "acme", "root", privileges=ALL_PRIVILEGES)
    token = tokens.create_token(api.ports, operator, "acme", "root").token
    form = enrollment_forms.create_form(
        api.ports, operator, "acme", slug="staff", profile="smime", access_code=None
    )
    spec = api.client.get("/openapi.json").json()
    agent = agents.create_agent(api.ports, operator, "acme", "dc1")
    return Api(api, token, spec, form.id, agent.token)


def _refused(api: Api, method: str, path: str, r: Any, expected: str | None) -> None:
    """422 in the area's error shape; ``expected`` names the field and the rule."""
    scm = not path.startswith("/api/v1/")
    assert r.status_code == 422, (method, path, r.status_code, r.text[:300])
    if method == "HEAD":
        return
    body = r.json()
    # The agent endpoints also give the Windows status for the client (AgentRefusal).
    extra = {"windows_status"} if path.startswith("/api/v1/agent/") else set()
    assert set(body) - extra == {"code", "description"}
    assert body["code"] == (-422 if scm else "validation_error"), body
    if expected is not None:
        assert expected in body["description"], (method, path, body)


def _bodies(api: Api) -> Iterator[tuple[str, str, Any, tuple[str | int, ...], bool]]:
    for method, path, op in api.operations():
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        if "schema" in schema:
            valid = _valid(api.spec, schema["schema"])
            for leaf, fixed in _text_fields(api.spec, schema["schema"]):
                yield method, path, valid, leaf, fixed


def test_every_text_field_of_every_body_refuses_control_characters(api_world: Api):
    api = api_world
    before = _rows(api.world.ports)
    fields: set[tuple[str, str]] = set()
    for method, path, valid, leaf, fixed in _bodies(api):
        fields.add((path, _where(leaf)))
        for char in [*CONTROLS.values(), SURROGATE]:
            r = api.send(method, api.url(path), _with(valid, leaf, f"a{char}b"))
            # A value of a fixed set is refused as none of them; a lone surrogate as no text
            # at all; everything else by the rule, which names the field.
            named = not fixed and char != SURROGATE
            _refused(api, method, path, r, f"{_where(leaf)}: {RULE}" if named else None)
    # The own API and the SCM layer, both versions: persons, keys, enrollment, forms.
    assert len(fields) > 60, sorted(fields)
    assert _rows(api.world.ports) == before


def test_line_breaks_only_where_a_field_holds_several_lines(api_world: Api):
    api = api_world
    multiline = set()
    for method, path, valid, leaf, fixed in _bodies(api):
        if fixed:
            continue
        name = _where(leaf).rsplit(".", 1)[-1]
        for brk in ("\n", "\r\n", "\t"):
            r = api.send(method, api.url(path), _with(valid, leaf, f"a{brk}b"))
            assert r.status_code < 500, (method, path, leaf, r.text)
            if name in MULTILINE:
                # Refused or not for other reasons (these values are no CSR or p12), never by
                # the rule.
                multiline.add(name)
                assert RULE not in r.text, (method, path, leaf, r.text)
            else:
                _refused(api, method, path, r, f"{_where(leaf)}: {RULE}")
    assert multiline == MULTILINE


def test_every_query_and_path_parameter_refuses_control_characters(api_world: Api):
    api = api_world
    before = _rows(api.world.ports)
    checked = 0
    for method, path, op in api.operations():
        for param in op.get("parameters", []):
            if param["in"] not in ("query", "path"):
                continue
            checked += 1
            name = param["name"]
            for char in CONTROLS.values():
                if param["in"] == "path":
                    url = api.url(path, {name: quote(f"{api.ids()[name]}{char}", safe="")})
                    r = api.send(method, url)
                else:
                    r = api.send(method, api.url(path), params={name: f"1{char}"})
                _refused(api, method, path, r, f"{name}: {RULE}")
        # A parameter no route has is refused too, and its name is not repeated.
        r = api.send(method, api.url(path), params={"zz-unknown\x1b": "1"})
        _refused(api, method, path, r, f"request: {RULE}")
        if method != "HEAD":
            assert "zz-unknown" not in r.text
        r = api.send(method, api.url(path), params={"zz-unknown": "1\x00"})
        _refused(api, method, path, r, f"request: {RULE}")
    assert checked > 60
    assert _rows(api.world.ports) == before


# --- the pages: every field of every form -------------------------------------------------------


@dataclass
class Form:
    page: str
    action: str
    method: str
    multipart: bool
    fields: list[tuple[str, str]] = field(default_factory=list)  # as a browser submits them
    names: list[str] = field(default_factory=list)  # every named text control


class _Forms(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__()
        self.page = page
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        form = self._form
        if tag == "form":
            self._form = Form(
                self.page,
                a.get("action") or self.page,
                (a.get("method") or "get").lower(),
                "multipart" in a.get("enctype", ""),
            )
            self.forms.append(self._form)
        elif form is None or not a.get("name"):
            return
        elif tag == "input" and a.get("type") != "file":
            name, kind = a["name"], a.get("type", "text")
            if name not in form.names:
                form.names.append(name)
            if kind not in ("radio", "checkbox") or "checked" in a:
                form.fields.append((name, a.get("value", "on" if kind == "checkbox" else "")))
        elif tag == "select":
            self._select = a["name"]
            form.names.append(a["name"])
        elif tag == "textarea":
            self._textarea = a["name"]
            form.names.append(a["name"])
            form.fields.append((a["name"], ""))
        if tag == "option" and self._select and form is not None:
            if not any(n == self._select for n, _ in form.fields):
                form.fields.append((self._select, a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def forms_of(page: str, html: str) -> list[Form]:
    parser = _Forms(page)
    parser.feed(html)
    return parser.forms


def _submit(client: TestClient, form: Form, name: str, value: str) -> Any:
    """The form as a browser sends it, with ``value`` in the field ``name`` (in every one of
    them, for checkboxes and radio buttons)."""
    fields = [(n, v) for n, v in form.fields if n != name] + [(name, value)]
    if form.method == "get":
        return client.get(form.action, params=fields)
    if form.multipart:
        empty = {"unused-file": ("", b"", "application/octet-stream")}
        return client.post(form.action, data=dict(fields), files=empty)
    return _post(client, form.action, fields)


def _post(client: TestClient, action: str, fields: list[tuple[str, str]]) -> Any:
    """A urlencoded form with repeated names (checkboxes), as browsers send it."""
    body = urlencode(fields)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return client.post(action, content=body, headers=headers)


def _drive_forms(client: TestClient, forms: list[Form]) -> int:
    """Every field of every form with each control character: the page refuses it."""
    driven = 0
    for form in forms:
        for name in form.names:
            if name == "csrf_token":
                continue  # a bad token is a stale form: 403 before anything is read
            driven += 1
            typed = dict(form.fields).get(name) or "x"
            for char in CONTROLS.values():
                r = _submit(client, form, name, f"{typed}{char}")
                label = (form.page, form.action, name, repr(char), r.status_code)
                assert r.headers["content-type"].startswith("text/html"), label
                if form.method == "get":
                    # A query the page did not offer: its error page, as for any bad filter.
                    assert r.status_code == 400 and "not valid" in r.text, label
                else:
                    assert r.status_code == 422 and PAGE_RULE in r.text, label
        if form.method == "post":
            # The name of a field is text too.
            r = _post(client, form.action, [*form.fields, ("odd\x00name", "x")])
            assert r.status_code == 422 and PAGE_RULE in r.text, form.action
    return driven


def _crawl(client: TestClient, paths: list[str]) -> list[Form]:
    """The forms of the pages, each once (the sign-out form is on every page)."""
    found: dict[tuple[str, str, tuple[str, ...]], Form] = {}
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200, (path, page.status_code)
        for form in forms_of(path, page.text):
            found.setdefault((form.action, form.method, tuple(form.names)), form)
    return list(found.values())


def test_every_field_of_every_console_form_refuses_control_characters(
    console: ConsoleWorld, operator: Actor
):
    world = console.world
    alice, cert = world.alice.person_id, world.alice.cert_ids[1]
    form = enrollment_forms.create_form(
        console.ports, operator, "acme", slug="staff", profile="smime", access_code=None
    )
    boss = console.sign_in("boss").client
    pages = [
        "/admin/",
        "/admin/persons",
        f"/admin/persons/{alice}",
        f"/admin/persons/{alice}/download",
        "/admin/certificates",
        f"/admin/certificates/{cert}",
        f"/admin/certificates/{cert}/download",
        "/admin/key-vault",
        "/admin/key-vault/edit",
        "/admin/audit",
        "/admin/admins",
        f"/admin/admins/{console.admin_ids['clerk']}",
        "/admin/forms",
        f"/admin/forms/{form.id}",
    ]
    forms = _crawl(boss, pages)
    # Signing in: the password step, and the TOTP step of an administrator without TOTP yet.
    stranger = console.client()
    sign_in = _crawl(stranger, ["/admin/login"])
    enrolling, totp_page = console.password_step("acme", "clerk", PASSWORD)
    assert totp_page.url.path == "/admin/totp"
    totp = forms_of("/admin/totp", totp_page.text)
    before = _rows(console.ports)

    driven = _drive_forms(boss, forms) + _drive_forms(stranger, sign_in)
    driven += _drive_forms(enrolling, totp)

    names = {n for f in [*forms, *sign_in, *totp] for n in f.names}
    expected = {"q", "email", "first_name", "secret_id", "reason", "own_passphrase", "login"}
    expected |= {"domains", "access_code", "exchange_host", "privilege", "code", "password"}
    assert expected <= names, names
    assert driven > 50
    assert _rows(console.ports) == before


def test_line_breaks_only_in_the_console_fields_of_several_lines(console: ConsoleWorld):
    alice = console.world.alice.person_id
    boss = console.sign_in("boss").client
    path = f"/admin/persons/{alice}/download"
    [download] = [f for f in _crawl(boss, [path]) if f.action == path]
    [create] = [f for f in _crawl(boss, ["/admin/forms"]) if f.action == "/admin/forms"]
    # Two lines pass the rule here, whatever the rest of the form makes of them.
    r = _submit(boss, download, "reason", "lost laptop\r\nticket 12")
    assert r.status_code < 500 and PAGE_RULE not in r.text
    r = _submit(boss, create, "domains", "example.org\r\nexample.net")
    assert r.status_code < 500 and PAGE_RULE not in r.text
    for name in ("name", "slug"):
        r = _submit(boss, create, name, "two\nlines")
        assert r.status_code == 422 and PAGE_RULE in r.text


@pytest.fixture
def enrolling(ports: Ports, acme: str) -> Iterator[TestClient]:  # noqa: F811 - the fixture
    """The enrollment form "staff" of test_enrollment, through the pages."""
    with TestClient(create_app(ports), base_url="https://testserver") as client:
        yield client


def test_every_field_of_the_enrollment_pages_refuses_control_characters(
    ports: Ports, enrolling: TestClient, smtp_server: SmtpServer
):
    web = enrolling
    [start] = _crawl(web, ["/enroll/acme/staff"])
    start.fields = [(n, "alice@example.org" if n == "email" else v) for n, v in start.fields]
    sent = _submit(web, start, "access_code", ACCESS)
    assert sent.status_code == 200, sent.text
    [code] = forms_of(start.action, sent.text)
    before = _rows(ports)
    mailed = len(smtp_server.messages)

    driven = _drive_forms(web, [start, code])

    assert {"email", "access_code", "code", "secret_id", "passphrase"} <= set(
        code.names + start.names
    )
    assert driven >= 8
    # The pages' paths and queries: the error page, as HTML.
    for path in ("/enroll/acme/staff%00", "/enroll/acme%1b/staff", "/enroll/acme/staff?x=%00"):
        r = web.get(path)
        assert r.status_code in (400, 404) and r.headers["content-type"].startswith("text/html")
    r = _post(web, "/enroll/acme/sta%7fff/code", start.fields)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert _rows(ports) == before and len(smtp_server.messages) == mailed
