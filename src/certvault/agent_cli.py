"""`certvault-agent`: the reference MS agent. It hands an AD CS request file (as `certreq -new`
writes it on Windows) to certvault and prints the certificate issued.

It is the integration point for a Windows service that speaks MS-WCCE (DCOM) to Windows clients:
that service fetches the CA exchange certificate for the clients (`exchange-certificate`),
forwards each request as this command does, and relays certvault's CMC response (`--out`) to the
client unchanged: it holds no CA key and decrypts nothing. Standard library only, so that it runs
wherever Python does.

The token is read from a file or from CERTVAULT_AGENT_TOKEN; on the command line it would show in
the process list. It is never printed.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

TOKEN_ENV = "CERTVAULT_AGENT_TOKEN"  # noqa: S105 - the name of a variable
MAX_RESPONSE = 1024 * 1024
TIMEOUT = 60

app = typer.Typer(
    help="The reference MS agent: submit AD CS requests to certvault.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
)


class AgentError(Exception):
    """What the command says before it exits 1 (never a secret, never the server's raw body)."""


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError:
            raise AgentError(f"The token file cannot be read: {token_file}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise AgentError(f"No agent token: give --token-file or set {TOKEN_ENV}.")
    return token


def _context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def _call(
    url: str, token: str, ca_file: Path | None, body: bytes | None = None
) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "*/*"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
    context = _context(ca_file) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:  # noqa: S310
            return answer.status, answer.headers.get("content-type", ""), answer.read(MAX_RESPONSE)
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read(MAX_RESPONSE)
    except (urllib.error.URLError, OSError) as error:
        raise AgentError(f"certvault cannot be reached at {url}: {type(error).__name__}") from None


def _server(url: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise AgentError("--server must be an http:// or https:// address.")
    return url.rstrip("/")


def _refusal(status: int, content_type: str, data: bytes) -> AgentError:
    """certvault's refusal in one line: its code, its message and the Windows status."""
    if "json" not in content_type:
        return AgentError(f"certvault answered {status}.")
    try:
        said = json.loads(data)
    except ValueError:
        return AgentError(f"certvault answered {status}.")
    line = f"refused ({status}): {said.get('code', '?')}: {said.get('description', '')}"
    windows = said.get("windows_status")
    if isinstance(windows, int):
        line += f" [Windows status 0x{windows:08X}]"
    return AgentError(line)


def issued_certificate(response: bytes) -> x509.Certificate:
    """The end-entity certificate in a CMC response (the one that is not a CA)."""
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(response)
    except ValueError:
        raise AgentError("certvault's answer holds no certificate.") from None
    for cert in certificates:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            return cert
    raise AgentError("certvault's answer holds no end-entity certificate.")


def _run(action: Callable[[], None]) -> None:
    try:
        action()
    except AgentError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def submit(
    request_file: Annotated[Path, typer.Argument(help="The request, as `certreq -new` wrote it.")],
    server: Annotated[str, typer.Option(help="certvault's address, e.g. https://vault.example")],
    template: Annotated[str, typer.Option(help="The Windows certificate template's name.")],
    token_file: Annotated[
        Path | None, typer.Option(help=f"A file holding the agent token (or set {TOKEN_ENV}).")
    ] = None,
    upn: Annotated[str, typer.Option(help="The requester's user principal name.")] = "",
    email: Annotated[str, typer.Option(help="The requester's address.")] = "",
    out: Annotated[
        Path | None, typer.Option(help="Write the CMC response here, for the Windows client.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="The CA bundle of certvault's TLS.")] = None,
) -> None:
    """Submit one request; print the certificate issued (PEM)."""

    def work() -> None:
        try:
            data = request_file.read_bytes()
        except OSError:
            raise AgentError(f"The request file cannot be read: {request_file}") from None
        # As certreq wrote it: PEM armour is sent as text, DER in base64.
        text = data.decode("ascii", "replace") if b"-----BEGIN" in data else None
        body = {
            "request": text if text is not None else base64.b64encode(data).decode(),
            "template": template,
            "requester": {k: v for k, v in (("upn", upn), ("email", email)) if v},
        }
        status, content_type, answer = _call(
            f"{_server(server)}/api/v1/agent/requests",
            _token(token_file),
            ca_file,
            json.dumps(body).encode(),
        )
        if status != 200:
            raise _refusal(status, content_type, answer)
        if out is not None:
            out.write_bytes(answer)
        typer.echo(issued_certificate(answer).public_bytes(Encoding.PEM).decode(), nl=False)

    _run(work)


@app.command("exchange-certificate")
def exchange_certificate(
    server: Annotated[str, typer.Option(help="certvault's address.")],
    token_file: Annotated[
        Path | None, typer.Option(help=f"A file holding the agent token (or set {TOKEN_ENV}).")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="The CA bundle of certvault's TLS.")] = None,
) -> None:
    """Print the CA exchange certificate (PEM) that Windows clients encrypt archived keys to."""

    def work() -> None:
        status, content_type, answer = _call(
            f"{_server(server)}/api/v1/agent/exchange-certificate?format=pem",
            _token(token_file),
            ca_file,
        )
        if status != 200:
            raise _refusal(status, content_type, answer)
        typer.echo(answer.decode("ascii", "replace"), nl=False)

    _run(work)


def main() -> None:
    app(prog_name="certvault-agent")


if __name__ == "__main__":
    main()
