"""Download rate limits shared by the own and the SCM-compatible API and the console: per
administrator, per token and per client address, holding across every worker
(services/kernel/ratelimit.py)."""

from __future__ import annotations

from fastapi import Request

from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ratelimit import Limit, Quota
from certvault.web.deps import Caller, client_ip, get_limiter, get_ports

HOUR = 3600


def download_counter(request: Request, caller: Caller | Actor) -> Quota:
    """The quota a download counts against, for services.vault.release to check once the
    release is authorized and to count with the release itself (``admit``): an attempt that
    could not have released a key (a token without keys:download, no privilege, a certificate
    out of sight) uses up no one's quota. Over a limit the release raises RateLimited, which it
    audits as a refused release."""
    settings = get_ports(request).settings
    actor = caller.actor if isinstance(caller, Caller) else caller
    limits = [Limit(f"dl-ip:{client_ip(request)}", settings.downloads_per_hour_ip, HOUR)]
    if actor.admin_id is not None:
        limits.append(Limit(f"dl-admin:{actor.admin_id}", settings.downloads_per_hour_admin, HOUR))
    if actor.token_id is not None:
        limits.append(Limit(f"dl-token:{actor.token_id}", settings.downloads_per_hour_token, HOUR))
    # One order for every request: concurrent counts lock the counter rows the same way round.
    return Quota(get_limiter(request), tuple(sorted(limits, key=lambda lim: lim.key)))
