"""`certvault admin reset-password`: mail an administrator a single-use set-password link."""

from __future__ import annotations

from typing import Annotated

import typer

from certvault.cli.common import guarded, operator, out, ports_for_command
from certvault.services.access import password_resets


def reset_password(login: str, account: Annotated[str, typer.Option(help="Account slug.")]) -> None:
    """Mail LOGIN a link to choose a new password. The operator never sees the link or the
    password; the old password works until the link is used, and TOTP stays as it is."""
    with ports_for_command() as ports:
        mailed = guarded(
            lambda: password_resets.request_reset_by_login(ports, operator(), account, login)
        )
        until = mailed.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        out.print(
            f"a set-password link for {mailed.login} in {account} was mailed to {mailed.email}"
            f" (it works once, until {until}; `certvault mail send` delivers queued mail)",
            markup=False,
        )
