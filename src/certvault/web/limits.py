"""Download rate limits shared by the own and the SCM-compatible API: per administrator, per
token and per client address, holding across every worker (services/kernel/ratelimit.py)."""

from __future__ import annotations

from fastapi import Request

from certvault.services.audit import log as audit
from certvault.services.kernel.ratelimit import Limit, enforce
from certvault.services.vault.release import RELEASE
from certvault.web.deps import Caller, client_ip, get_limiter, get_ports

HOUR = 3600


def enforce_download_limits(
    request: Request, caller: Caller, *, target_type: str, target_id: int
) -> None:
    """Count one download; over a limit, the attempt is a refused release, audited as such."""
    ports = get_ports(request)
    settings = ports.settings
    limiter = get_limiter(request)
    actor = caller.actor
    with audit.refusals_audited(
        ports,
        account_id=actor.account_id,
        actor=actor,
        action=RELEASE,
        target_type=target_type,
        target_id=target_id,
    ):
        limits = [Limit(f"dl-ip:{client_ip(request)}", settings.downloads_per_hour_ip, HOUR)]
        if actor.admin_id is not None:
            limits.append(
                Limit(f"dl-admin:{actor.admin_id}", settings.downloads_per_hour_admin, HOUR)
            )
        if actor.token_id is not None:
            limits.append(
                Limit(f"dl-token:{actor.token_id}", settings.downloads_per_hour_token, HOUR)
            )
        enforce(limiter, *limits)
