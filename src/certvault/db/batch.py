"""Statements over many rows at once (a bulk import's batch): set-based INSERTs and lookups by
many keys, in few statements whose text does not change with the number of rows.

On PostgreSQL each column's values go as one array parameter (binary, db/engine.py): the driver
parses and the server plans the same short statement for every batch, and the server runs one
statement, not one per row. An ``IN (...)`` of a hundred parameters is a new text for every
count, and a generic plan of it rebuilds the list for every row it reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Integer,
    Select,
    any_,
    bindparam,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.types import LargeBinary, TypeEngine, UserDefinedType


def is_postgresql(dialect: Dialect) -> bool:
    return dialect.name == "postgresql"


class _Bytea(UserDefinedType[bytes]):
    """BYTEA whose values go to the driver as they are: LargeBinary wraps each one in the
    driver's Binary object, which it then dumps in Python, one by one."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "BYTEA"


def _array(column_type: TypeEngine[Any]) -> ARRAY[Any]:
    return ARRAY(_Bytea() if isinstance(column_type, LargeBinary) else column_type)


def among(dialect: Dialect, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(array)``, one parameter whatever the
    number of values. Give every column of one of the table's indexes its own, so that the
    rows are read through it."""
    if is_postgresql(dialect):
        return column == any_(bindparam(None, list(values), type_=_array(column.type)))
    return column.in_(list(values))


def insert_rows(
    connection: Connection, model: type[Any], rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows`` of ``model``, each with the same keys: on PostgreSQL with one statement
    (the arrays unnested), elsewhere with the driver's executemany. As an executemany would,
    a column left out gets its Python-side default for each row."""
    if not rows:
        return
    table = model.__table__
    if not is_postgresql(connection.dialect):
        connection.execute(insert(table), list(rows))
        return
    names = list(rows[0])
    if any(row.keys() != rows[0].keys() for row in rows):
        raise ValueError("The rows of one INSERT have the same columns.")
    defaults = [
        (column.key, column.default)
        for column in table.c
        if column.key not in rows[0]
        and column.default is not None
        and (column.default.is_callable or column.default.is_scalar)
    ]
    columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in names}
    for name, default in defaults:
        columns[name] = [default.arg(None) if default.is_callable else default.arg for _ in rows]
    connection.execute(_unnest_insert(table, tuple(columns)), columns)


# The statements themselves, built once: building one costs more than running it.
_INSERTS: dict[tuple[Any, tuple[str, ...]], Insert] = {}


def _unnest_insert(table: Any, names: tuple[str, ...]) -> Insert:
    found = _INSERTS.get((table, names))
    if found is None:
        arrays = [bindparam(name, type_=_array(table.c[name].type)) for name in names]
        unnested = func.unnest(*arrays).table_valued(*names).render_derived()
        found = _INSERTS[table, names] = insert(table).from_select(names, select(*unnested.c))
    return found


def new_ids(connection: Connection, model: type[Any], count: int) -> list[int]:
    """``count`` ids for new rows of ``model``, from its sequence (PostgreSQL): a row can then be
    written whole, its MAC over its id included, by one INSERT.

    A few ids (a release's notice, a small batch) come from a block that the database connection
    drew ahead of need, as a sequence's own CACHE hands them out to a database session: one
    statement per block instead of one per insert. The block lives and dies with the connection
    (a reconnect, after a restart or a restore, starts a new one). Like any sequence value, an id
    is never handed out twice and a rolled-back insert leaves a gap; rows inserted over different
    connections get ids out of the order they commit in (nothing reads ids as the order of
    events: audit events have their own sequence numbers).
    """
    if count > _FEW:
        return _draw(connection, model, count)
    # A connection serves one thread at a time: its own block needs no lock.
    reserve: deque[int] = connection.info.setdefault(_RESERVE, {}).setdefault(model, deque())
    if len(reserve) < count:
        reserve.extend(_draw(connection, model, _BLOCK + count - len(reserve)))
    return [reserve.popleft() for _ in range(count)]


def _draw(connection: Connection, model: type[Any], count: int) -> list[int]:
    query = _NEXTVALS.get(model)
    if query is None:
        sequence = func.pg_get_serial_sequence(literal(model.__tablename__), literal("id"))
        query = _NEXTVALS[model] = select(func.nextval(sequence)).select_from(
            func.generate_series(1, bindparam("count", type_=Integer))
        )
    return list(connection.execute(query, {"count": count}).scalars())


_FEW, _BLOCK = 4, 32
_RESERVE = "certvault_ids_ahead"  # in the connection's info: model -> ids drawn ahead
_NEXTVALS: dict[type[Any], Select[int]] = {}
