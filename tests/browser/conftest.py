"""Playwright drives Debian's Chromium, headless. Never `playwright install`: no browser is
downloaded, the one the system package manager installed is used."""

from __future__ import annotations

from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "accept_downloads": True}


@pytest.fixture(scope="session")
def base_url() -> None:
    """No base URL: each test names its own server. (pytest-playwright's own fixture is a method
    of a plugin object, which pytest 9 warns about, and warnings are errors here.)"""
    return None
