"""The enrollment form pages at /enroll/<account-slug>/<form-slug>."""

from certvault.web.enroll.pages import router

__all__ = ["router"]
