"""Where `certvault serve` keeps its workers' metric files: private, and never on the data disk,
where a full filesystem would kill the server through its memory-mapped files (SIGBUS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from certvault.cli import serve


def test_metric_files_live_apart_from_the_home(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    mine = serve.prepare_metrics_dir(home)
    try:
        assert not mine.is_relative_to(home)
        assert mine.parent == serve.metrics_parent(home) != serve.metrics_parent(other)
        assert mine.name == f"serve-{os.getpid()}"
        for folder in (mine, *mine.parents[:3]):
            assert folder.stat().st_uid == os.geteuid()
            assert folder.stat().st_mode & 0o077 == 0, folder
    finally:
        shutil.rmtree(serve.metrics_parent(home).parent)


def test_a_folder_someone_else_could_write_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    planted = shared / f"certvault-{os.geteuid()}"
    planted.mkdir(parents=True)
    planted.chmod(0o777)  # made first by someone else, open to all
    monkeypatch.setattr(serve, "metrics_parent", lambda _home: planted / "x" / "prometheus")
    mine = serve.prepare_metrics_dir(tmp_path / "home")
    assert mine.parent == tmp_path / "home" / "run" / "prometheus"
    assert not (planted / "x").exists()
