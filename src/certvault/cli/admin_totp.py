"""`certvault admin reset-totp`: forget an administrator's authenticator, end their sessions."""

from __future__ import annotations

from typing import Annotated

import typer

from certvault.cli.common import guarded, operator, out, ports_for_command
from certvault.services.access import admins


def reset_totp(login: str, account: Annotated[str, typer.Option(help="Account slug.")]) -> None:
    """Forget LOGIN's TOTP secret and sign them out; their next sign-in sets up a new one."""
    with ports_for_command() as ports:
        guarded(lambda: admins.reset_totp(ports, operator(), account, login))
        out.print(f"TOTP reset for {login} in {account}; they enroll again at the next sign-in")
