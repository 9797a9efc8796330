"""What every command shares: settings, ports, the operator identity and error reporting."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeVar

from rich.console import Console
from rich.markup import escape
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from certvault.config import Settings
from certvault.db import migrate
from certvault.db.engine import Database, failure_of
from certvault.errors import CertvaultError
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports, open_ports, operator_name

T = TypeVar("T")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def fail(message: str, code: str = "error", exit_code: int = 1) -> NoReturn:
    # Escaped: "[code]" and any brackets in the message are text, not rich markup.
    # One line whatever the terminal's width: scripts and people grep for it.
    err.print(
        f"[bold red]error[/] {escape(f'[{code}]: {message}')}",
        markup=True,
        highlight=False,
        soft_wrap=True,
    )
    raise SystemExit(exit_code)


def refuse_uninitialized(settings: Settings) -> None:
    """Stop a command, creating nothing, unless `certvault init` made an installation where the
    settings point: otherwise it would leave an empty home behind and fail on a bare database."""
    url = make_url(settings.effective_database_url)
    if settings.database_url is None:
        where, variable = f"{settings.home_dir} (CERTVAULT_HOME; default ./var)", "CERTVAULT_HOME"
    else:
        where = f"{url.render_as_string(hide_password=True)} (CERTVAULT_DATABASE_URL)"
        variable = "CERTVAULT_DATABASE_URL"
    message = (
        f"No certvault installation at {where}. Run `certvault init` to create one there, "
        f"or set {variable}=... to use another."
    )
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(str(url.database)).expanduser().is_file():
            fail(message, "not_initialized")
    initialized = guarded(lambda: _has_schema(settings.effective_database_url))
    if initialized is None:
        fail(f"Cannot open the database at {where}.", "database_unavailable")
    if not initialized:
        fail(message, "not_initialized")


def _has_schema(url: str) -> bool | None:
    """Whether the database holds certvault's schema; None when it cannot be opened (the
    driver's message is not passed on: it may carry the password)."""
    db = Database(url)
    try:
        return migrate.is_initialized(db)
    except OperationalError:
        return None
    finally:
        db.dispose()


@contextmanager
def ports_for_command(*, initializing: bool = False) -> Iterator[Ports]:
    """The ports of a command. Only `certvault init` (``initializing``) may meet an installation
    that is not there yet."""
    settings = Settings()
    if not initializing:
        refuse_uninitialized(settings)
    try:
        ports = open_ports(settings)
    except CertvaultError as exc:
        fail(exc.message, exc.code)
    try:
        yield ports
    finally:
        ports.close()


def operator() -> Actor:
    return Actor.operator(operator_name())


def guarded(work: Callable[[], T]) -> T:
    """Run a command body: certvault errors become one clear line and exit 1; anything else
    is reported by type only, because a library's message may carry data we must not print."""
    try:
        return work()
    except CertvaultError as exc:
        fail(exc.message, exc.code)
    except DBAPIError as exc:
        failure = failure_of(exc)
        if failure is None:
            _unexpected(exc)
        fail(failure.message, failure.code)
    except KeyboardInterrupt:
        fail("interrupted", "interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence for secrets
        _unexpected(exc)


def _unexpected(exc: BaseException) -> NoReturn:
    if os.environ.get("CERTVAULT_DEBUG") == "1":
        # Frames only: no exception message and no local variables.
        err.print("".join(traceback.format_tb(exc.__traceback__)), markup=False)
    fail(
        f"unexpected {type(exc).__name__}; its message is not shown because it may carry "
        "data. Set CERTVAULT_DEBUG=1 to see where it happened.",
        "internal",
    )


def read_secret_file(path: Path, what: str) -> str:
    """A password or passphrase from a file: one trailing newline is dropped, nothing else."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"Cannot read the {what} file {path}: {exc.strerror}.", "unreadable")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"The {what} file {path} is not UTF-8.", "invalid_input")
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text


def is_tty() -> bool:
    return sys.stderr.isatty()
