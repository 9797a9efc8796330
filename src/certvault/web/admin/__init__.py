"""The admin console under /admin/: one module per page, each with its own router."""

from fastapi import APIRouter

from certvault.web.admin import (
    about,
    admins,
    agents,
    audit,
    auth,
    certificates,
    downloads,
    forms,
    home,
    key_vault,
    persons,
    recovery_requests,
    set_password,
)

router = APIRouter(include_in_schema=False)
for _page in (
    auth,
    home,
    persons,
    certificates,
    downloads,
    key_vault,
    recovery_requests,
    about,
    audit,
    admins,
    forms,
    agents,
    set_password,
):
    router.include_router(_page.router)

__all__ = ["router"]
