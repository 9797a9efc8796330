"""`certvault serve`: the application under uvicorn, with several worker processes (PKCS#12 work
holds the GIL), TLS or loopback-only plain HTTP, JSON logs and multiprocess metrics."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import logging.config
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from certvault.cli.common import fail, ports_for_command

APP = "certvault.web.app:create_served_app"
WORKER_HEALTHCHECK_SECONDS = 60
USAGE = 2  # exit status for a refused command line, as click uses for usage errors


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def served_url(scheme: str, host: str, port: int) -> str:
    """The URL of a server listening on ``host``:``port``. A wildcard address is no place a
    client can go: the machine's name stands for it."""
    name = host.strip("[]")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None and address.is_unspecified:
        name = socket.getfqdn()
    elif address is not None and address.version == 6:
        name = f"[{address.compressed}]"
    default_port = 443 if scheme == "https" else 80
    return f"{scheme}://{name}" + ("" if port == default_port else f":{port}")


def trusted_proxies(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def metrics_parent(home: Path) -> Path:
    """Where the servers of ``home`` keep their workers' metric files: in memory (/dev/shm) when
    the system has it, never beside the data. prometheus_client maps these files into memory, and
    a mapped file on a full filesystem kills the process writing to it (SIGBUS) where a full
    database only fails the request."""
    shm = Path("/dev/shm")  # noqa: S108 - a private folder of our own is made and checked in it
    base = shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None
    if base is None:
        base = Path(tempfile.gettempdir())
    installation = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    return base / f"certvault-{os.geteuid()}" / installation / "prometheus"


def _private_dirs(top: Path, path: Path) -> bool:
    """Make ``path`` and the folders between ``top`` and it, each 0700 and owned by us (a shared
    temporary folder lets anyone make a name first); False if one is not."""
    for part in [*reversed(path.relative_to(top).parents), path.relative_to(top)]:
        folder = top / part
        if folder == top:
            continue
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(folder)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return False
    return True


def prepare_metrics_dir(home: Path) -> Path:
    """A fresh, private PROMETHEUS_MULTIPROC_DIR for this server; stale ones of servers that are
    gone are removed (their numbers would be added to ours)."""
    parent = metrics_parent(home)
    top = parent.parents[2]
    if not _private_dirs(top, parent):
        parent = home / "run" / "prometheus"  # no private folder in memory: beside the data
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in parent.iterdir():
        pid = old.name.removeprefix("serve-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    mine = parent / f"serve-{os.getpid()}"
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(mode=0o700)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Default: CERTVAULT_PORT or 8080.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 2,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Certificate chain (PEM) to serve HTTPS with.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    insecure_http: Annotated[
        bool,
        typer.Option("--insecure-http", help="Allow plain HTTP on a non-loopback address."),
    ] = False,
) -> None:
    """Run the HTTP(S) server: the REST API, the SCM-compatible API, health checks and metrics.

    Behind a proxy, list its addresses in CERTVAULT_TRUSTED_PROXIES: only then are forwarded
    client addresses believed.
    """
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together: give both, or neither.", "usage", USAGE)
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            fail(f"Cannot read {path}.", "usage", USAGE)
    if tls_cert is None and not is_loopback(host) and not insecure_http:
        fail(
            f"Refusing plain HTTP on {host}, which is not a loopback address: serve TLS with "
            "--tls-cert and --tls-key, or put a TLS proxy in front and pass --insecure-http.",
            "insecure_http",
            USAGE,
        )

    import uvicorn

    from certvault.web.logging import log_config
    from certvault.web.server import PROTOCOL

    # Fail here with one clear line rather than in every worker; nothing is kept open.
    with ports_for_command() as ports:
        settings = ports.settings
    served_port = port or settings.port
    logging.config.dictConfig(log_config())
    # The workers read their settings from the environment: the port served, and the URL every
    # link, form and CRL point is written under.
    os.environ["CERTVAULT_PORT"] = str(served_port)
    if settings.public_url is None:
        url = served_url("https" if tls_cert else "http", host, served_port)
        os.environ["CERTVAULT_PUBLIC_URL"] = url
        if not is_loopback(host):
            logging.getLogger("certvault.serve").warning(
                "serving on %s without CERTVAULT_PUBLIC_URL: links, forms and CRL points are "
                "written under %s; set CERTVAULT_PUBLIC_URL to the address clients use",
                host,
                url,
            )
    proxies = trusted_proxies(settings.trusted_proxies)
    metrics_dir = prepare_metrics_dir(settings.home_dir)
    # Read by prometheus_client when it is first imported: in each spawned worker.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        uvicorn.run(
            APP,
            factory=True,
            host=host,
            port=served_port,
            workers=workers,
            http=PROTOCOL,
            log_config=log_config(),
            access_log=False,
            proxy_headers=bool(proxies),
            forwarded_allow_ips=proxies or None,
            server_header=False,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            timeout_graceful_shutdown=10,
            # uvicorn kills a worker that does not answer its health check in time, and a worker
            # still starting on a busy machine (importing the application takes seconds) cannot:
            # with uvicorn's 5 s, a loaded host restarts its workers over and over.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
