"""Background duties: one run at a time per name, leases, take-over of a dead holder."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from certvault.db.models import DutyLock
from certvault.services.kernel.duties import DutyLost, DutyRunning, database_now, duty
from certvault.services.kernel.ports import Ports


def test_second_run_refuses_while_first_holds(ports: Ports) -> None:
    with duty(ports, "rotate") as held:
        with pytest.raises(DutyRunning) as refused, duty(ports, "rotate"):
            pass
        assert refused.value.code == "duty_running"
        held.renew()
        # Another name is another duty.
        with duty(ports, "retention"):
            pass
    with ports.db.read() as session:
        assert session.scalars(select(DutyLock)).all() == []
    with duty(ports, "rotate"):  # free again once released
        pass


def test_expired_lease_is_taken_over_and_the_old_holder_stops(ports: Ports) -> None:
    with duty(ports, "rotate", lease=timedelta(seconds=60)) as first:
        with ports.db.transaction() as session:
            past = database_now(session) - timedelta(seconds=1)
            session.execute(update(DutyLock).values(expires_at=past))
        with duty(ports, "rotate") as second:
            assert second.taken_over == first.holder
            with pytest.raises(DutyLost):
                first.renew()
            second.renew()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(ports: Ports) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with duty(ports, "rotate") as held:
        host = held.holder.split(":")[0]
        with ports.db.transaction() as session:
            session.execute(update(DutyLock).values(holder=f"{host}:{gone}:dead"))
    # The block's release found another holder and left the row: the next run takes it over.
    with ports.db.read() as session:
        assert session.scalars(select(DutyLock.holder)).one() == f"{host}:{gone}:dead"
    with duty(ports, "rotate") as again:
        assert again.taken_over == f"{host}:{gone}:dead"


def test_a_live_holder_elsewhere_is_respected(ports: Ports) -> None:
    with ports.db.transaction() as session:
        now = database_now(session)
        session.add(
            DutyLock(
                name="verify",
                holder="otherhost:1:x",
                started_at=now,
                renewed_at=now,
                expires_at=now + timedelta(minutes=5),
            )
        )
    with pytest.raises(DutyRunning) as refused, duty(ports, "verify"):
        pass
    assert "otherhost" in refused.value.message


def test_database_now_is_utc_and_current(ports: Ports) -> None:
    with ports.db.read() as session:
        now = database_now(session)
    assert now.tzinfo is not None
    assert abs((now - ports.clock()).total_seconds()) < 5
