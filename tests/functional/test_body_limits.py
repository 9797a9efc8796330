"""Request bodies over their cap (1 MiB for key uploads, 64 KiB elsewhere) answer 413 in the
area's error shape, whether the client announces the size (Content-Length) or not
(Transfer-Encoding: chunked), on the own API, the SCM-compatible API, the console and the
enrollment pages; nothing is stored. Driven through the ASGI application with a body that
arrives in chunks, as a server hands it over (tests/functional/test_server.py sends one to a real
`certvault serve`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from certvault.web.app import DEFAULT_LIMIT, KEY_UPLOAD_LIMIT
from tests.functional.api_fixtures import ApiWorld, api_fixture  # noqa: F401 - `api`
from tests.functional.helpers import counts

CHUNK = 8 * 1024
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=cvboundary"
MULTIPART_HEAD = (
    b'--cvboundary\r\nContent-Disposition: form-data; name="signing_p12"; filename="a.p12"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def _areas(api: ApiWorld) -> list[tuple[str, str, int, Any]]:
    """(path, content type, cap, the error code of the area's shape)."""
    alice = api.alice.person_id
    return [
        ("/api/v1/persons", JSON, DEFAULT_LIMIT, "too_large"),
        (f"/api/v1/persons/{alice}/keys", JSON, KEY_UPLOAD_LIMIT, "too_large"),
        ("/api/person/v1", JSON, DEFAULT_LIMIT, -413),
        (f"/api/person/v2/{alice}/import-key", JSON, KEY_UPLOAD_LIMIT, -413),
        ("/api/smime/v2/enroll", JSON, DEFAULT_LIMIT, -413),
        ("/admin/login", FORM, DEFAULT_LIMIT, "too_large"),
        ("/admin/key-vault/recovery-options", MULTIPART, DEFAULT_LIMIT, "too_large"),
        ("/enroll/acme/staff/code", FORM, DEFAULT_LIMIT, "too_large"),
    ]


def _body(content_type: str, size: int) -> bytes:
    head = (
        MULTIPART_HEAD
        if content_type == MULTIPART
        else b'{"p12": "'
        if content_type == JSON
        else b"a="
    )
    return head + b"A" * (size - len(head))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _post(api: ApiWorld, path: str, content_type: str, data: bytes, chunked: bool) -> Any:
    headers = {**api.headers("keys"), "Content-Type": content_type}

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            content: Any = _chunks(data) if chunked else data
            return await c.post(path, content=content, headers=headers)

    # On a thread of its own: a browser test run earlier by this worker may have left its event
    # loop running on this thread, where asyncio.run() is refused.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, send()).result()


def test_bodies_over_the_cap_are_413_chunked_or_not(api: ApiWorld):
    before = counts(api.ports)
    for path, content_type, cap, code in _areas(api):
        over = _body(content_type, cap + CHUNK)
        chunked = _post(api, path, content_type, over, chunked=True)
        assert "content-length" not in chunked.request.headers
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        announced = _post(api, path, content_type, over, chunked=False)
        for r in (chunked, announced):
            assert r.status_code == 413, (path, r.status_code, r.text[:200])
            assert r.json() == {
                "code": code,
                "description": f"The request body is larger than {cap} bytes.",
            }
        # Under the cap the body is read, and refused for what it is (no JSON, no CSRF token).
        under = _post(api, path, content_type, _body(content_type, cap - CHUNK), chunked=True)
        assert under.status_code not in (413, 500), (path, under.status_code, under.text[:200])
    assert counts(api.ports) == before


@pytest.mark.parametrize("size", [DEFAULT_LIMIT + 1, 10 * DEFAULT_LIMIT])
def test_a_chunked_body_just_over_or_far_over_the_cap(api: ApiWorld, size: int):
    r = _post(api, "/api/v1/persons", JSON, _body(JSON, size), chunked=True)
    assert r.status_code == 413 and r.json()["code"] == "too_large"
