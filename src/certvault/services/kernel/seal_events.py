"""Where SQLAlchemy calls the row seals (seals.py), so that no read or write path can miss them:
every sealed row the ORM loads is checked, and every one certvault inserts or changes is sealed in
the same flush. Installed for every session when the services are imported (kernel/__init__.py).

Bulk ``insert()``/``update()``/``delete()`` statements pass no row events, so on a sealed table
they are refused through the session: such rows are written through the ORM, one by one, or by
:func:`insert_sealed`, which seals a set of new rows itself exactly as a flush would. A statement
that changes only columns the seal does not bind says so with the execution option
``UNBOUND_ONLY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, event, insert, inspect, update
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction, object_session
from sqlalchemy.orm.attributes import set_committed_value

from certvault.db.batch import insert_rows, is_postgresql, new_ids
from certvault.db.models import Admin
from certvault.errors import ConfigurationError
from certvault.services.kernel import seals

UNBOUND_ONLY = "certvault_unbound_only"
_SEALED_TABLES = frozenset(spec.table for spec in seals.SEALED)


def _spec(mapper: Mapper[Any]) -> seals.SealedTable:
    spec = seals.sealed_table(mapper.class_)
    assert spec is not None
    return spec


def _default(mapper: Mapper[Any], spec: seals.SealedTable, name: str) -> Any:
    column = mapper.columns[name]
    default = column.default
    if default is None or column.primary_key:
        return None
    if default.is_callable:
        return default.arg(None)  # type: ignore[attr-defined]
    if default.is_scalar:
        return default.arg  # type: ignore[attr-defined]
    raise ConfigurationError(f"A sealed column has a SQL default: {spec.table}.{name}.")


def _fill_defaults(mapper: Mapper[Any], obj: Any, spec: seals.SealedTable) -> None:
    # Column defaults are set now rather than by the INSERT, so that the MAC covers them.
    state = inspect(obj)
    for name in spec.columns:
        if state.dict.get(name) is None:
            setattr(obj, name, _default(mapper, spec, name))


def inserted_ids(
    connection: Connection, model: type[Any], rows: Sequence[dict[str, Any]]
) -> list[int]:
    """Insert ``rows`` (each with its unique ``uuid``) in as few statements as the driver
    allows, and give their new ids in the order of ``rows``. On PostgreSQL the ids come from
    the table's sequence first and one INSERT writes the rows (db/batch.py). Elsewhere they
    come from INSERT ... RETURNING, matched by uuid, not by the order RETURNING gives them:
    asking for that order makes SQLite insert one row per statement."""
    if is_postgresql(connection.dialect):
        ids = new_ids(connection, model, len(rows))
        insert_rows(connection, model, [{**row, "id": i} for row, i in zip(rows, ids, strict=True)])
        return ids
    table = model.__table__
    returned = connection.execute(insert(table).returning(table.c.uuid, table.c.id), list(rows))
    by_uuid = {row_uuid: row_id for row_uuid, row_id in returned}
    return [by_uuid[row["uuid"]] for row in rows]


def insert_sealed(session: Session, model: type[Any], rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert new rows of a sealed table with set-based statements, sealed as a flush seals them:
    column defaults filled in first (so that the MAC covers them), and the MAC over the row's
    id. On PostgreSQL the ids come first from the table's sequence, so that one INSERT writes
    every row whole, its MAC included; elsewhere they come from one INSERT ... RETURNING, and
    one executemany UPDATE writes the MACs. ``rows`` are filled in place; the new ids come back
    in their order. Grant rows are not written this way: their generation belongs to a flush."""
    spec = seals.sealed_table(model)
    if spec is None or spec.grant:
        raise ConfigurationError(f"Not a sealed table for set-based inserts: {model.__name__}.")
    if not rows:
        return []
    mapper: Mapper[Any] = inspect(model)
    keys = {column.key for column in mapper.primary_key}
    for row in rows:
        for name in spec.columns:
            if name not in keys and row.get(name) is None:
                row[name] = _default(mapper, spec, name)
    table = model.__table__
    connection = session.connection()
    ports = seals.ports_of(session)
    if is_postgresql(connection.dialect):
        ids = new_ids(connection, model, len(rows))
        for row, row_id in zip(rows, ids, strict=True):
            row["id"] = row_id
            row["mac"] = seals.seal_values(connection, ports, spec, row)
        insert_rows(connection, model, rows)
        return ids
    ids = inserted_ids(connection, model, rows)
    seals_of = []
    for row, row_id in zip(rows, ids, strict=True):
        row["id"] = row_id
        seals_of.append(
            {"row_id": row_id, "row_mac": seals.seal_values(connection, ports, spec, row)}
        )
    connection.execute(
        update(table).where(table.c.id == bindparam("row_id")).values(mac=bindparam("row_mac")),
        seals_of,
    )
    return ids


def _sync_organization_ids(admin: Admin) -> None:
    # The sealed copy of the organizations an administrator acts in (Admin.organization_ids).
    if "organizations" in inspect(admin).dict:
        ids = " ".join(str(i) for i in sorted(o.id for o in admin.organizations))
        if admin.organization_ids != ids:
            admin.organization_ids = ids


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    changed = (*session.new, *session.dirty, *session.deleted)
    if not any(seals.sealed_table(type(obj)) for obj in changed):
        return
    ports = seals.ports_of(session)
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, Admin):
            _sync_organization_ids(obj)
    accounts: set[int] = set()
    for obj in session.dirty:
        spec = seals.sealed_table(type(obj))
        if spec is not None and spec.grant and seals.takes_away(spec, obj):
            accounts.add(seals.account_id_of(spec, obj))
    for obj in session.deleted:
        spec = seals.sealed_table(type(obj))
        if spec is not None and spec.grant:
            accounts.add(seals.account_id_of(spec, obj))
    for account_id in sorted(accounts - seals.bumped(session)):
        seals.bump(session, ports, account_id)


def _before_insert(mapper: Mapper[Any], connection: Connection, obj: Any) -> None:
    spec = _spec(mapper)
    _fill_defaults(mapper, obj, spec)
    if spec.grant:
        session = object_session(obj)
        ports = seals.ports_of(session)
        assert session is not None
        obj.grant_generation = seals.current_generation(session, connection, ports, obj)


def _after_insert(mapper: Mapper[Any], connection: Connection, obj: Any) -> None:
    # The row's id is known only now: the MAC is written by a second statement.
    mac = seals.seal_mac(connection, seals.ports_of(object_session(obj)), _spec(mapper), obj)
    keys = [
        (column, getattr(obj, mapper.get_property_by_column(column).key))
        for column in mapper.primary_key
    ]
    connection.execute(
        update(mapper.class_.__table__)
        .where(*(column == value for column, value in keys))
        .values(mac=mac)
    )
    set_committed_value(obj, "mac", mac)


def _before_update(mapper: Mapper[Any], connection: Connection, obj: Any) -> None:
    obj.mac = seals.seal_mac(connection, seals.ports_of(object_session(obj)), _spec(mapper), obj)


def _on_load(obj: Any, context: Any) -> None:
    seals.check_loaded(obj, context.session)


def _on_refresh(obj: Any, context: Any, attrs: Any) -> None:
    spec = seals.sealed_table(type(obj))
    assert spec is not None
    if attrs is None or set(attrs) & {*spec.columns, "mac"}:
        seals.check_loaded(obj, context.session)


for _sealed in seals.SEALED:
    event.listen(_sealed.model, "load", _on_load)
    event.listen(_sealed.model, "refresh", _on_refresh)
    event.listen(_sealed.model, "before_insert", _before_insert)
    event.listen(_sealed.model, "after_insert", _after_insert)
    event.listen(_sealed.model, "before_update", _before_update)


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk_writes(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    if getattr(table, "name", None) in _SEALED_TABLES and not state.execution_options.get(
        UNBOUND_ONLY
    ):
        raise ConfigurationError("Sealed rows are written through the ORM, one by one.")


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if not session.in_nested_transaction():
        seals.advance_witness(session)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        seals.forget(session)
