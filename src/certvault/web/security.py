"""What every server-rendered page needs: strict security headers, and CSRF tokens checked before
anything else a POST does. Shared by the enrollment pages and, later, the admin console.

CSRF tokens are signed and bound to a cookie: the cookie holds a random value, the form a MAC of
it under a service key. A plain double submit (the same value in both) falls to anyone who can
plant a cookie (a sibling subdomain, a plain-HTTP response); without the key nobody can make the
token that goes with a planted cookie. The key is shared through the database, so a form served by
one worker or node is accepted by any other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from certvault.errors import Forbidden
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports

CSRF_COOKIE = "certvault_csrf"
CSRF_FIELD = "csrf_token"
CSRF_KEY_PURPOSE = "web-csrf"
_COOKIE_BYTES = 32

# No scripts at all, styles only from our own origin, forms only to ourselves, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
# The console also runs its own small script file (copy buttons, dialogs): still no inline code.
CONSOLE_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Pages carry one-time results (a passphrase, a key): no cache may keep them.
    "Cache-Control": "no-store",
}


class CsrfFailed(Forbidden):
    """The form is stale or did not come from this site; reload the page and try again."""

    code = "csrf_failed"


def apply_page_headers(response: Response, csp: str = CONTENT_SECURITY_POLICY) -> Response:
    """Set the headers every page and download carries."""
    for name, value in PAGE_HEADERS.items():
        response.headers[name] = value
    response.headers["Content-Security-Policy"] = csp
    return response


def _mac(key: bytes, cookie: str) -> str:
    digest = hmac.new(key, b"csrf\x00" + cookie.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _valid_cookie(value: str | None) -> bool:
    return value is not None and 20 <= len(value) <= 64 and value.isascii() and value.isalnum()


class Csrf:
    """The token for one request, and the cookie to set when the browser has none yet."""

    def __init__(self, ports: Ports, request: Request) -> None:
        self._ports = ports
        self._request = request
        cookie = request.cookies.get(CSRF_COOKIE)
        self._new_cookie: str | None = None
        if not _valid_cookie(cookie):
            # Letters and digits only: nothing in it needs quoting in a header.
            cookie = self._new_cookie = secrets.token_hex(_COOKIE_BYTES)
        assert cookie is not None
        self.cookie = cookie

    @property
    def token(self) -> str:
        return _mac(keyring.service_secrets(self._ports, CSRF_KEY_PURPOSE)[0], self.cookie)

    def set_cookie(self, response: Response) -> None:
        if self._new_cookie is None:
            return
        response.set_cookie(
            CSRF_COOKIE,
            self._new_cookie,
            httponly=True,
            samesite="strict",
            secure=_is_https(self._ports, self._request),
            path="/",
        )


def _is_https(ports: Ports, request: Request) -> bool:
    return request.url.scheme == "https" or ports.settings.public_url.startswith("https://")


def check_csrf(ports: Ports, request: Request, form: FormData) -> None:
    """Refuse a POST whose token does not belong to its cookie. Call it first: before rate
    limits, lookups or anything else the request would make certvault do."""
    cookie = request.cookies.get(CSRF_COOKIE)
    token = form.get(CSRF_FIELD)
    if not _valid_cookie(cookie) or not isinstance(token, str) or not 20 <= len(token) <= 64:
        raise CsrfFailed()
    assert cookie is not None
    keys = keyring.service_secrets(ports, CSRF_KEY_PURPOSE)
    # Every key is tried: two processes that met no key at once may each have made one.
    if not any(hmac.compare_digest(_mac(key, cookie).encode(), token.encode()) for key in keys):
        raise CsrfFailed()
