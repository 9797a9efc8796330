"""One place maps certvault errors to HTTP: the own API's string codes, the SCM API's numbers.

Validation errors name the field and the rule, never anything the client chose: not the submitted
value (FastAPI's default 422 body echoes the input, which may be a password or a p12), not the name
of an unknown field or query parameter, not a key of a mapping. Unexpected errors answer 500 with
no detail at all; their type goes to the log, their message does not.
"""

from __future__ import annotations

import base64
import logging
import typing
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from pydantic_core.core_schema import ErrorType
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from certvault.db.engine import failure_of
from certvault.errors import CertvaultError
from certvault.services.pki.agent_refusals import AgentRequestRefused

log = logging.getLogger("certvault.web")

NOT_JSON = "the body is not valid JSON"
COMPAT_PREFIXES = ("/api/person/", "/api/smime/", "/api/organization/")


def is_compat(path: str) -> bool:
    return path.startswith(COMPAT_PREFIXES) or path in {p.rstrip("/") for p in COMPAT_PREFIXES}


def compat_code(status: int) -> int:
    """The SCM API answers errors with a negative integer code; ours is minus the HTTP status."""
    return -status


def error_response(
    request: Request,
    status: int,
    code: str,
    description: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any]
    if is_compat(request.url.path):
        body = {"code": compat_code(status), "description": description}
    else:
        body = {"code": code, "description": description, **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


def _refusal_fields(exc: AgentRequestRefused) -> dict[str, Any]:
    """An agent's refusal carries the Windows status, and the CMC failure response when the
    request could be read."""
    fields: dict[str, Any] = {"windows_status": exc.windows_status}
    if exc.cmc_response is not None:
        fields["cmc_response"] = base64.b64encode(exc.cmc_response).decode()
    return fields


# pydantic's own error types whose messages are made of the rule and of our schema alone (a
# length, a bound, the allowed values, a pattern): never of the input. Every other type of
# pydantic's may put input into its message (value_error and assertion_error carry whatever a
# validator raised; uuid_parsing quotes a character; union_tag_invalid the tag sent) and is
# answered with UNSPECIFIED instead. A PydanticCustomError raised by our own validators carries
# a message written here and is shown as it is.
SAFE_TYPES = frozenset(
    {
        "missing",
        "none_required",
        "model_type",
        "model_attributes_type",
        "dataclass_type",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "multiple_of",
        "finite_number",
        "too_short",
        "too_long",
        "iterable_type",
        "string_type",
        "string_unicode",
        "string_too_short",
        "string_too_long",
        "string_pattern_mismatch",
        "string_not_ascii",
        "enum",
        "literal_error",
        "dict_type",
        "list_type",
        "tuple_type",
        "set_type",
        "frozen_set_type",
        "bool_type",
        "bool_parsing",
        "int_type",
        "int_parsing",
        "int_parsing_size",
        "int_from_float",
        "float_type",
        "float_parsing",
        "date_type",
        "date_parsing",
        "date_from_datetime_parsing",
        "date_from_datetime_inexact",
        "datetime_type",
        "datetime_parsing",
        "datetime_from_date_parsing",
        "time_type",
        "time_parsing",
        "timezone_naive",
        "timezone_aware",
    }
)
PYDANTIC_TYPES = frozenset(typing.get_args(ErrorType))
UNSPECIFIED = "the value is not valid"
UNKNOWN_FIELD = "unknown field"
_LOCATIONS = ("body", "query", "path", "header", "cookie")


def _names(node: Any) -> Iterator[str]:
    """Every property and parameter name of an OpenAPI document."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            yield from properties
        if node.get("in") in _LOCATIONS and isinstance(node.get("name"), str):
            yield node["name"]  # a parameter object
        for value in node.values():
            yield from _names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _names(value)


def _known_names(app: FastAPI) -> frozenset[str]:
    """The field and parameter names of our own schema: the only words of a location that an
    answer repeats."""
    known: frozenset[str] | None = getattr(app.state, "known_names", None)
    if known is None:
        known = app.state.known_names = frozenset(_names(app.openapi()))
    return known


def _field(loc: tuple[Any, ...] | list[Any], known: frozenset[str]) -> str:
    """The location as our names and list positions; a word we did not define (the key of a
    mapping, an unknown parameter, the name of a union member) is left out."""
    parts = [str(p) for p in loc if isinstance(p, int) or (p in known and p not in _LOCATIONS)]
    return ".".join(parts) or "request"


def describe(err: dict[str, Any], known: frozenset[str]) -> str:
    """One validation error as "<field>: <rule>", with nothing in it that the client chose."""
    kind = str(err.get("type", ""))
    loc = tuple(err.get("loc", ()))
    if kind == "json_invalid":
        return NOT_JSON
    if kind == "extra_forbidden":
        # The last step of the location is the unknown name itself.
        where, rule = _field(loc[:-1], known), UNKNOWN_FIELD
    else:
        safe = kind in SAFE_TYPES or kind not in PYDANTIC_TYPES
        where, rule = _field(loc, known), str(err.get("msg", "")) if safe else UNSPECIFIED
    return f"{where}: {rule}"


def _is_console(request: Request) -> bool:
    return request.url.path.startswith("/admin/")


def _is_enrollment(request: Request) -> bool:
    """The public pages: enrollment forms and the Private Key Recovery Form."""
    path = request.url.path
    return path.startswith(("/enroll/", "/kv/")) or path == "/kv"


async def _page_error(request: Request, status: int, message: str) -> Response:
    """The error page of the console or of the enrollment pages (they import this package)."""
    if _is_console(request):
        from certvault.web.admin.console import error_page
    else:
        from certvault.web.enroll.pages import error_page

    return await run_in_threadpool(error_page, request, status, message)


def database_failure(request: Request, exc: DBAPIError) -> JSONResponse | None:
    """A database that is down, restarting or full answers 503 ``database_unavailable`` or 507
    ``storage_full`` with Retry-After: the client may try again, nothing was stored. None for
    any other database error (a bug: 500)."""
    failure = failure_of(exc)
    if failure is None:
        return None
    log.warning(
        "%s (%s) on %s %s",
        failure.code,
        type(exc.orig).__name__,
        request.method,
        request.url.path,
    )
    return certvault_error_response(request, failure)


def certvault_error_response(request: Request, exc: CertvaultError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    extra = _refusal_fields(exc) if isinstance(exc, AgentRequestRefused) else None
    return error_response(request, exc.status, exc.code, exc.message, headers, extra)


def install(app: FastAPI) -> None:
    @app.exception_handler(CertvaultError)
    async def certvault_error(request: Request, exc: CertvaultError) -> JSONResponse:
        return certvault_error_response(request, exc)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        answer = database_failure(request, exc)
        if answer is not None:
            return answer
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(request, 500, "internal", "Internal error.")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if _is_console(request) or _is_enrollment(request):
            # A console id that is not a number names nothing, and neither does a path with
            # control characters: the page of a missing object.
            in_path = any(tuple(e.get("loc", ()))[:1] == ("path",) for e in exc.errors())
            status, message = (404, "Not found.") if in_path else (400, "The request is not valid.")
            return await _page_error(request, status, message)
        known = _known_names(app)
        # The input itself (err["input"]) is never used.
        problems = dict.fromkeys(describe(err, known) for err in exc.errors()[:10])
        return error_response(request, 422, "validation_error", "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if (_is_console(request) or _is_enrollment(request)) and exc.status_code in (404, 405):
            message = "Not found." if exc.status_code == 404 else "Method not allowed."
            return await _page_error(request, exc.status_code, message)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a body that is not UTF-8 with a bare 400; it is JSON that does not
            # parse (RFC 8259 §8.1), so it gets the same answer as any other.
            return error_response(request, 422, "validation_error", NOT_JSON)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        description = {404: "Not found.", 405: "Method not allowed."}.get(
            exc.status_code, str(exc.detail) if isinstance(exc.detail, str) else "Error."
        )
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # One route per method: Starlette's Allow names only the first route's methods.
            headers = {"Allow": ", ".join(_allowed_methods(app, request.scope))}
        return error_response(
            request, exc.status_code, codes.get(exc.status_code, "http_error"), description, headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(request, 500, "internal", "Internal error.")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods of the most specific path that matches: `/certificates/enroll` is a resource
    of its own, not an id for `/certificates/{certificate_id}`."""
    by_path: dict[str, set[str]] = {}
    for method in _METHODS:
        probe = {**scope, "method": method}
        # Included routers are flattened: each route with its full path.
        for route in iter_route_contexts(app.router.routes):
            if route.matches(probe)[0] == Match.FULL:
                by_path.setdefault(route.path or "", set()).add(method)
    if not by_path:
        return []
    fewest = min(path.count("{") for path in by_path)
    allowed = set().union(*(m for path, m in by_path.items() if path.count("{") == fewest))
    return [m for m in _METHODS if m in allowed]
