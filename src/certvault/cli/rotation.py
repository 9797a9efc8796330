"""`certvault kek rotate-account`: an account key rotated online (services/vault/rotation.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from certvault.cli.common import err, fail, guarded, operator, out, ports_for_command
from certvault.errors import InvalidInput
from certvault.services.vault.rotation import (
    DEFAULT_BATCH,
    MAX_BATCH,
    RotationPlan,
    check_batch_size,
    plan_rotation,
    rotate_account_key,
)

SHOWN_FAILURES = 20  # a whole version that does not open would name every key on it


def _versions(versions: tuple[int, ...] | list[int]) -> str:
    return ", ".join(f"v{v}" for v in versions) or "none"


def _pending(plan: RotationPlan) -> str:
    parts = ", ".join(f"v{v}: {n:,}" for v, n in sorted(plan.pending.items()))
    return f"{plan.to_rewrap:,} data keys" + (f" ({parts})" if parts else "")


def _left(plan: RotationPlan) -> str:
    text = f"destroyed keys left as they are: {plan.destroyed_skipped:,}"
    if plan.unopenable:
        text += (
            f"; {plan.unopenable:,} keys are under an account key destroyed before and cannot be"
            " opened (crypto-shredded; left as they are)"
        )
    return text


def _heading(plan: RotationPlan) -> str:
    step = "a new version" if plan.creates_version else "resuming the rotation begun before"
    old = sorted(set(plan.retires) | set(plan.pending))
    return f"account {plan.account}: account key {_versions(old)} -> v{plan.target} ({step})"


def rotate_account(
    slug: Annotated[str, typer.Argument(help="Account slug.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be rewrapped; change nothing.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help=f"Keys per transaction, 1 to {MAX_BATCH:,}.")
    ] = DEFAULT_BATCH,
) -> None:
    """Rotate an account key online: a new version, every data key rewrapped under it in batches
    while the server keeps archiving and releasing, then the old version wiped. Run it again
    after an interruption: it goes on where it stopped."""
    try:
        check_batch_size(batch_size)
    except InvalidInput as exc:
        fail(exc.message, exc.code, 2)
    with ports_for_command() as ports:
        if dry_run:
            plan = guarded(lambda: plan_rotation(ports, slug))
            out.print(_heading(plan), markup=False)
            out.print(
                f"would rewrap {_pending(plan)}; would retire {_versions(plan.retires)}; "
                f"{_left(plan)}",
                markup=False,
            )
            out.print("dry run: nothing was changed", markup=False)
            return
        with Progress(
            TextColumn("rewrapping"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            disable=not sys.stderr.isatty(),
            transient=True,
        ) as progress:
            task = progress.add_task("rewrap", total=None)

            def on_start(plan: RotationPlan) -> None:
                progress.console.print(_heading(plan), markup=False)
                progress.update(task, total=plan.to_rewrap)

            result = guarded(
                lambda: rotate_account_key(
                    ports,
                    operator(),
                    slug,
                    batch_size=batch_size,
                    on_start=on_start,
                    on_batch=lambda n: progress.advance(task, n),
                )
            )
    for failure in result.failures[:SHOWN_FAILURES]:
        err.print(
            f"FAILED key {failure.escrowed_key_uuid}: its data key does not open ({failure.code})",
            markup=False,
        )
    if len(result.failures) > SHOWN_FAILURES:
        err.print(f"... and {len(result.failures) - SHOWN_FAILURES:,} more", markup=False)
    out.print(
        f"rewrapped {result.rewrapped:,} data keys in {result.batches:,} batches "
        f"({result.passes} passes, {result.conflicts:,} changed meanwhile and done again); "
        f"{_left(result.plan)}",
        markup=False,
    )
    if not result.ok:
        fail(
            f"{len(result.failures):,} keys could not be rewrapped; the old account key is kept "
            f"for them. `certvault verify --account {result.plan.account}` checks every key.",
            "rotation_failed",
        )
    out.print(
        f"account key v{result.plan.target} in use; retired {_versions(result.retired)} "
        "(wrapped key wiped; backups taken before still hold it)",
        markup=False,
    )
