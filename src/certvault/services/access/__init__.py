"""Administrators, their credentials, API tokens, console sessions and TOTP."""
