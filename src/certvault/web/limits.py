"""Download rate limits shared by the own and the SCM-compatible API: per administrator, per
token and per client address, holding across every worker (services/ratelimit.py)."""

from __future__ import annotations

from fastapi import Request

from certvault.services.ratelimit import enforce
from certvault.web.deps import Caller, client_ip, get_limiter, get_ports

HOUR = 3600


def enforce_download_limits(request: Request, caller: Caller) -> None:
    settings = get_ports(request).settings
    limiter = get_limiter(request)
    actor = caller.actor
    if actor.admin_id is not None:
        enforce(limiter, f"dl-admin:{actor.admin_id}", settings.downloads_per_hour_admin, HOUR)
    if actor.token_id is not None:
        enforce(limiter, f"dl-token:{actor.token_id}", settings.downloads_per_hour_token, HOUR)
    enforce(limiter, f"dl-ip:{client_ip(request)}", settings.downloads_per_hour_ip, HOUR)
