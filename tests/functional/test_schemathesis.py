"""schemathesis over the whole OpenAPI schema (the own API and the SCM-compatible paths), in
process, on SQLite and PostgreSQL.

As an account administrator holding every privilege and every scope (so that the calls reach the
services, not just the token check): no 5xx, every answer conforms to the schema (a documented
status code, content type, headers and body), and a request the schema allows is not refused but
for the few rules a JSON Schema cannot state (SEMANTIC_REFUSALS). Without credentials: 401
everywhere, but for what is refused before the credentials are looked at (a body that is not
JSON, control characters in the path or query).

Seeded and deterministic (Hypothesis ``derandomize``): the same cases every run. Every failure of
every operation is collected and reported together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.config import OperationConfig
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test
from schemathesis.python._constants.orchestrator import make_constants_value_source

from certvault.services.access import admins, tokens
from certvault.services.kernel.actors import Actor
from certvault.web.control_characters import MESSAGE as CONTROL_RULE
from certvault.web.errors import NOT_JSON
from tests.functional.api_fixtures import ALL_PRIVILEGES, ApiWorld, api_fixture  # noqa: F401
from tests.functional.helpers import counts, events

MAX_EXAMPLES = 10  # per operation and pass: 10-20 s per backend with the coverage phase
MAX_EXAMPLES_ANONYMOUS = 5  # every answer is the same 401 there

# Every check runs, positive data acceptance too: a request the schema allows must not be refused
# with 400, 422 or any other status outside schemathesis' defaults (2xx, 3xx, 401, 403, 404, 409,
# 429). The schema states every rule JSON Schema can express (lengths, bounds, enums, formats,
# patterns, the control-character rule). What it cannot express is below: per operation, the
# statuses a schema-valid request may still get, each documented in the operation's responses.
SEMANTIC_REFUSALS: dict[str, tuple[int, str]] = {
    # `cursor` is opaque: only a `next_cursor` the server gave names a position.
    "GET /api/v1/persons": (422, "a cursor the server did not give"),
    "GET /api/v1/certificates": (422, "a cursor the server did not give"),
    "GET /api/v1/audit-events": (422, "a cursor the server did not give"),
    # Base64 that decodes, but not to a PKCS#12 file that opens with `password`.
    "POST /api/v1/persons/{person_id}/keys": (422, "not a PKCS#12 file, or the wrong password"),
    "POST /api/person/v1/{personId}/import-key": (422, "not a PKCS#12 file"),
    "POST /api/person/v2/{personId}/import-key": (422, "not a PKCS#12 file"),
    # The passphrase floor is in the schema; the account's own minimum (8 to 64) and the
    # strength estimate are not, nor that a mobileconfig's PKCS#12 is always TripleDES-SHA1.
    "POST /api/v1/certificates/{certificate_id}/key": (422, "account policy, weak passphrase"),
    "POST /api/v1/persons/{person_id}/keys/download": (422, "account policy, weak passphrase"),
    "POST /api/smime/v1/keystore/{certId}": (422, "account policy, weak passphrase"),
    "POST /api/smime/v2/keystore/{certId}": (422, "account policy, weak passphrase"),
    # A CSR that does not parse or verify, a key the rules refuse, an address of another person.
    "POST /api/v1/certificates/enroll": (422, "the CSR, or whose the address is"),
    "POST /api/smime/v1/enroll": (422, "the CSR, or whose the address is"),
    "POST /api/smime/v2/enroll": (422, "the CSR, or whose the address is"),
    # Rules between fields: dual keys only with smime, key types of the profile, an access code
    # or remove_access_code, domain names.
    "POST /api/v1/forms": (422, "rules between fields, domain names"),
    "PATCH /api/v1/forms/{form_id}": (422, "rules between fields, domain names"),
}
DEFAULT_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]


def _allow_semantic_refusals(schema: Any) -> None:
    """Per operation, positive_data_acceptance also accepts the status of SEMANTIC_REFUSALS."""
    for label, (status, _reason) in SEMANTIC_REFUSALS.items():
        accepted = {"expected-statuses": [*DEFAULT_ACCEPTED, str(status)]}
        schema.config.operations.operations.append(
            OperationConfig.from_dict(
                {"include-name": label, "checks": {"positive_data_acceptance": accepted}}
            )
        )


# Bodies that get past the account's policy, for operations whose generated bodies seldom do (a
# passphrase of 12 characters or more). Which bodies are generated depends on the constants
# schemathesis finds in certvault's source, so any change of the source may shift them; these
# cases run beside the generated ones, so that the work behind the operation is reached anyway.
WORKING_BODIES: dict[str, Any] = {
    f"POST /api/smime/{v}/keystore/{{certId}}": {"passphrase": "a-passphrase-long-enough"}
    for v in ("v1", "v2")
}


@pytest.fixture
def world(api: ApiWorld) -> ApiWorld:
    # Header logins and downloads are rate-limited (tested in test_compat and test_api_v1). Here
    # hundreds of generated requests would run into those limits and hide the paths behind them.
    s = api.ports.settings
    s.logins_per_minute_ip = s.logins_per_minute_login = 1_000_000
    s.downloads_per_hour_admin = s.downloads_per_hour_token = s.downloads_per_hour_ip = 1_000_000
    return api


@pytest.fixture
def root_token(world: ApiWorld, operator: Actor) -> str:
    """A token of an account administrator with every privilege and every scope."""
    admins.create_admin(world.ports, operator, "acme", "root", privileges=ALL_PRIVILEGES)
    token = tokens.create_token(world.ports, operator, "acme", "root")
    assert set(token.scopes) == {"read", "keys:upload", "keys:download", "manage"}
    return token.token


def _schema(world: ApiWorld, bearer: str | None) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.client.app)
    _allow_semantic_refusals(schema)
    if bearer is not None:
        # schemathesis' auth API: the token goes on every generated case, except on those where
        # schemathesis removes or spoils the credentials on purpose (negative cases).

        @schema.auth(refresh_interval=None)
        class RootToken:
            def get(self, case: Any, context: Any) -> str:
                return bearer

            def set(self, case: Any, data: str, context: Any) -> None:
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


def _known_ids(world: ApiWorld) -> dict[str, Any]:
    """Path parameters naming objects that exist and are visible to the administrator: random
    ids would nearly always answer 404 and never reach the work behind them."""
    person, cert = world.alice.person_id, world.alice.cert_ids[1]
    return {
        "person_id": person,
        "personId": person,
        "certificate_id": cert,
        "certId": cert,
        "email": world.alice.email,
    }


def _drive(
    schema: Any, known: dict[str, Any], check: Callable[[Any], None], max_examples: int
) -> dict[str, str]:
    """Run ``check`` on every operation's cases; failures by operation.

    First what schemathesis' pytest plugin would run (explicit examples, the coverage phase's
    boundary and type cases, fuzzing in positive and negative mode, all ids random), built by the
    plugin's own builder: the plugin itself cannot run under pytest 9 (it sets
    ``Function._nodeid``, which pytest 9.2 no longer has). Then positive cases whose path names
    an object that exists: random ids nearly always answer 404 and never reach the work behind.
    """
    schema.config.generation.update(
        max_examples=max_examples, deterministic=True, database="none", no_shrink=True
    )
    fuzz = settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the report shows the curl call
        suppress_health_check=list(HealthCheck),
    )
    feedback = FeedbackSources(constants_value_source=make_constants_value_source(schema))
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40  # the own API and the SCM-compatible paths, both versions
    for operation in operations:
        runs = [
            build_operation_test(
                config=schema.config,
                operation=operation,
                test_func=check,
                given_kwargs={},
                feedback=feedback,
            )
        ]
        names = [p.name for p in operation.path_parameters]
        if names and all(name in known for name in names):
            fixed = {name: known[name] for name in names}
            strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed)
            runs.append(fuzz(given(case=strategy)(check)))
            if operation.label in WORKING_BODIES:
                body = WORKING_BODIES[operation.label]
                strategy = operation.as_strategy(
                    GenerationMode.POSITIVE, path_parameters=fixed, body=body
                )
                runs.append(fuzz(given(case=strategy)(check)))
        for run in runs:
            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - all reported below
                failures[operation.label] = _describe(exc)
                break
    return failures


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and not str(exc).startswith("Schemathesis found"):
        return "\n".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _report(failures: dict[str, str]) -> str:
    return "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())


def test_whole_schema_as_an_administrator(world: ApiWorld, root_token: str) -> None:
    statuses: dict[str, set[int]] = {}

    def check(case: Any) -> None:
        response = case.call_and_validate()
        statuses.setdefault(case.operation.label, set()).add(response.status_code)

    failures = _drive(_schema(world, root_token), _known_ids(world), check, MAX_EXAMPLES)
    assert not failures, _report(failures)
    # The calls got past authentication into the services and did work there.
    assert all(codes - {401} for codes in statuses.values()), statuses
    for label in (
        "PATCH /api/v1/persons/{person_id}",
        "POST /api/v1/certificates/{certificate_id}/key",
        "POST /api/v1/persons/{person_id}/keys/download",
        "PUT /api/person/v1/{personId}",
        "POST /api/smime/v2/keystore/{certId}",
        "GET /api/smime/v2",
    ):
        assert 200 in statuses[label], (label, statuses[label])
    released = [e for e in events(world.ports, "key.release") if e.outcome == "success"]
    assert {e.actor.split(" ")[0] for e in released} == {"admin:root"}


def test_whole_schema_without_credentials(world: ApiWorld) -> None:
    statuses: dict[str, set[int]] = {}

    def check(case: Any) -> None:
        response = case.call_and_validate()
        statuses.setdefault(case.operation.label, set()).add(response.status_code)
        if case.method.upper() != case.operation.method.upper():
            # The coverage phase tries methods the path does not have: routing answers first.
            assert response.status_code == 405, (case.method, case.operation.label)
            return
        if case.operation.path in ("/healthz", "/readyz"):
            return
        if response.status_code == 422:
            # Two refusals come before the credentials are looked at: a body that is not JSON at
            # all (FastAPI reads the body before any dependency runs), and a path or query with
            # control characters (refused before any route reads a parameter). Nothing else
            # gets past them.
            if case.method.upper() == "HEAD":
                return  # no body to say which: a HEAD sends none, so it is the path or query
            description = response.json()["description"]
            assert description == NOT_JSON or description.endswith(CONTROL_RULE), response.text
            return
        assert response.status_code == 401, (case.operation.label, response.text)

    before = counts(world.ports)
    failures = _drive(_schema(world, None), _known_ids(world), check, MAX_EXAMPLES_ANONYMOUS)
    assert not failures, _report(failures)
    assert all(
        401 in codes
        for label, codes in statuses.items()
        if "healthz" not in label and "readyz" not in label
    ), statuses
    assert counts(world.ports) == before
    assert not [e for e in events(world.ports, "key.release")]


def test_refusals_the_schema_cannot_state_are_documented(world: ApiWorld) -> None:
    spec = world.client.get("/openapi.json").json()
    for label, (status, _reason) in SEMANTIC_REFUSALS.items():
        method, path = label.split(" ", 1)
        assert str(status) in spec["paths"][path][method.lower()]["responses"], label
