"""Download rate limits shared by the own and the SCM-compatible API and the console: per
administrator, per token and per client address, holding across every worker
(services/kernel/ratelimit.py)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from certvault.services.kernel.ratelimit import Limit, enforce
from certvault.web.deps import Caller, client_ip, get_limiter, get_ports

HOUR = 3600


def download_counter(request: Request, caller: Caller) -> Callable[[], None]:
    """What counts one download against the limits, for services.vault.release to call once the
    release is authorized (``admit``): an attempt that could not have released a key (a token
    without keys:download, no privilege, a certificate out of sight) uses up no one's quota.
    Over a limit it raises RateLimited, which the release audits as a refused release."""
    settings = get_ports(request).settings
    limiter = get_limiter(request)
    actor = caller.actor
    limits = [Limit(f"dl-ip:{client_ip(request)}", settings.downloads_per_hour_ip, HOUR)]
    if actor.admin_id is not None:
        limits.append(Limit(f"dl-admin:{actor.admin_id}", settings.downloads_per_hour_admin, HOUR))
    if actor.token_id is not None:
        limits.append(Limit(f"dl-token:{actor.token_id}", settings.downloads_per_hour_token, HOUR))
    return lambda: enforce(limiter, *limits)
