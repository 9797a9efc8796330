"""`certvault serve` whose SQLite database is as full as a file says: a launcher for the disk-full
drill, so that the product itself carries no test switch.

Every connection the pool hands out first runs ``PRAGMA max_page_count = N`` with N read from the
file named by ``CERTVAULT_DRILL_PAGE_LIMIT``. A limit at or below the database's size makes it
full (SQLite answers SQLITE_FULL, as on a full disk); a large one gives the space back, without a
restart. Run with ``--workers 1``: the server then runs in this process, where the hook is.

    python -m tests.faults.page_limit serve --workers 1 --port N
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

ENV = "CERTVAULT_DRILL_PAGE_LIMIT"
UNLIMITED = 1_000_000_000


def set_limit(path: Path, pages: int) -> None:
    path.write_text(f"{pages}\n")


def _limit(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    if type(dbapi_conn).__module__ != "sqlite3":
        return
    pages = int(Path(os.environ[ENV]).read_text())
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA max_page_count = {pages}")
    cursor.close()


def main() -> None:
    event.listen(Pool, "checkout", _limit)
    from certvault.cli.main import main as certvault

    sys.argv = ["certvault", *sys.argv[1:]]
    certvault()


if __name__ == "__main__":
    main()
