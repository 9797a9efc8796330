"""The Private Key Recovery Form at /kv/<account-slug> (the account's Key Vault UI URL)."""

from certvault.web.recovery.pages import router

__all__ = ["router"]
