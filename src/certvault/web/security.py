"""What every server-rendered page needs: strict security headers, and CSRF tokens checked before
anything else a POST does. Shared by the enrollment pages and, later, the admin console.

CSRF tokens are MACs under a service key. Once a browser has a console session, its token is bound
to that session (a MAC of the session's id): a token fetched with one session, or before signing in,
is refused with another session's cookie. Before that (the sign-in and enrollment pages) the token
is bound to a cookie of its own holding a random value. A plain double submit (the same value in
both) falls to anyone who can plant a cookie; without the key nobody can make the token that goes
with a planted cookie. The key is shared through the database, so a form served by one worker or
node is accepted by any other.

Both cookies are ``__Host-`` cookies (Secure, Path=/, no Domain): no sibling host and no plain-HTTP
page can set or overwrite them. Browsers keep Secure cookies over TLS; current Chromium also on
http://127.0.0.1 (what `make run` serves; the browser tests check it) and http://localhost, Firefox
on http://localhost. A browser that does not (Safari on plain-HTTP loopback) cannot sign in there,
as over plain HTTP anywhere else.
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
from certvault.services.access.web_sessions import SESSION_COOKIE, session_id_of
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports

CSRF_COOKIE = "__Host-certvault_csrf"
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


def _mac(key: bytes, bound_to: str) -> str:
    digest = hmac.new(key, bound_to.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _valid_cookie(value: str | None) -> bool:
    return value is not None and 20 <= len(value) <= 64 and value.isascii() and value.isalnum()


def _session_binding(request: Request) -> str | None:
    """What a token of a browser with a console session is bound to: the session's id (the hash
    the database knows; any session cookie, live or not, so that a form and its post agree)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 1024:
        return None
    return "csrf-session\x00" + session_id_of(token)


class Csrf:
    """The token for one request, and the cookie to set when the browser has none yet."""

    def __init__(self, ports: Ports, request: Request) -> None:
        self._ports = ports
        self._session = _session_binding(request)
        cookie = request.cookies.get(CSRF_COOKIE)
        self._new_cookie: str | None = None
        if not _valid_cookie(cookie):
            # Letters and digits only: nothing in it needs quoting in a header.
            cookie = self._new_cookie = secrets.token_hex(_COOKIE_BYTES)
        assert cookie is not None
        self.cookie = cookie

    @property
    def token(self) -> str:
        bound_to = self._session or "csrf\x00" + self.cookie
        return _mac(keyring.service_secrets(self._ports, CSRF_KEY_PURPOSE)[0], bound_to)

    def set_cookie(self, response: Response) -> None:
        if self._new_cookie is None:
            return
        response.set_cookie(
            CSRF_COOKIE, self._new_cookie, httponly=True, samesite="strict", secure=True, path="/"
        )


def check_csrf(ports: Ports, request: Request, form: FormData) -> None:
    """Refuse a POST whose token does not belong to its session (or, with no session, to its
    cookie). Call it first: before rate limits, lookups or anything else the request would make
    certvault do. Nothing is looked up: the binding comes from the request's cookies alone."""
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not 20 <= len(token) <= 64:
        raise CsrfFailed()
    bound_to = _session_binding(request)
    if bound_to is None:
        cookie = request.cookies.get(CSRF_COOKIE)
        if not _valid_cookie(cookie):
            raise CsrfFailed()
        bound_to = f"csrf\x00{cookie}"
    keys = keyring.service_secrets(ports, CSRF_KEY_PURPOSE)
    # Every key is tried: two processes that met no key at once may each have made one.
    if not any(hmac.compare_digest(_mac(key, bound_to).encode(), token.encode()) for key in keys):
        raise CsrfFailed()
