"""CRLs at their stable public URLs: /crl/<account-slug>/<ca-name>.crl, DER, no authentication.

Not in the OpenAPI schema: a CRL is a PKI publication point that relying parties fetch by the
URL inside certificates, not an API operation.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from certvault.services.pki import crl
from certvault.web.deps import PortsDep

router = APIRouter(include_in_schema=False)

CRL_MEDIA_TYPE = "application/pkix-crl"
# A revocation publishes a new CRL at once; caches should not hide it for long.
MAX_AGE_SECONDS = 3600
_MAX_SEGMENT = 63


@router.get("/crl/{account_slug}/{ca_name}.crl")
def get_crl(account_slug: str, ca_name: str, ports: PortsDep) -> Response:
    if len(account_slug) > _MAX_SEGMENT or len(ca_name) > _MAX_SEGMENT:
        raise crl.CrlNotFound()
    published = crl.current_crl(ports, account_slug, ca_name)
    # Never cached past nextUpdate, when it stops being valid.
    remaining = int((published.next_update - ports.clock()).total_seconds())
    max_age = max(0, min(MAX_AGE_SECONDS, remaining))
    return Response(
        published.der,
        media_type=CRL_MEDIA_TYPE,
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )
