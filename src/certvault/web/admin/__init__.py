"""The admin console under /admin/."""

from certvault.web.admin.auth import router

__all__ = ["router"]
