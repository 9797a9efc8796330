"""The API documentation at /docs in Chromium with every request to another host blocked: Swagger
UI comes from certvault itself, renders the operations, and the Content-Security-Policy blocks
nothing it needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.serving import serving
from tests.functional import cli_env
from tests.functional.smtp_server import free_port

ARTIFACTS = Path(__file__).parent.parent / "artifacts"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    cli_gen = cli_env.cli_for("sqlite", tmp_path)
    cli = next(cli_gen)
    port = free_port()
    cli.bootstrap()
    try:
        with serving(cli, port, tmp_path / "serve.log"):
            yield f"http://127.0.0.1:{port}"
    finally:
        cli_gen.close()


def test_docs_render_the_operations_offline(page: Page, server: str) -> None:
    own = urlsplit(server).netloc
    elsewhere: list[str] = []
    blocked_by_csp: list[str] = []
    seen: list[str] = []

    def only_the_server(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == own:
            seen.append(url)
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    page.route("**/*", only_the_server)
    page.on(
        "console",
        lambda m: blocked_by_csp.append(m.text) if "Content Security Policy" in m.text else None,
    )
    answer = page.goto(f"{server}/docs")
    assert answer is not None and answer.status == 200
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert "unsafe-inline" not in answer.headers["content-security-policy"]

    # The operations of the own API and of the SCM-compatible one, drawn from /openapi.json.
    certificates = page.locator(".opblock-summary-path", has_text="/api/v1/certificates")
    expect(certificates.first).to_be_visible(timeout=30_000)
    expect(page.locator(".opblock-summary-path", has_text="/api/smime/v2").first).to_be_visible()
    assert page.locator(".opblock").count() > 20
    page.locator(".opblock-summary", has_text="/api/v1/key-vault").first.click()
    expect(page.get_by_role("button", name="Try it out").first).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)

    assert elsewhere == [], "the page asked another host"
    assert blocked_by_csp == [], "the Content-Security-Policy blocked something"
    assert f"{server}/openapi.json" in seen
    assert any(u.endswith("/docs/static/swagger-ui-bundle.js") for u in seen)
