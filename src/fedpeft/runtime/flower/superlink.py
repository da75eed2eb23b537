"""``flower-superlink`` with its control plane reachable only from trusted addresses.

flwr 1.42 serves the Fleet API (SuperNodes), the Control API (``flwr run``, ``flwr
supernode register``, …) and the Runtime API (the ServerApp's SuperExec) on ONE HTTPS port,
and outside Flower Enterprise its Control API authenticates no one
(``NoOpControlAuthnPlugin``): whoever reaches the port can register a SuperNode key —
defeating ``--enable-supernode-auth`` — and start a run whose ServerApp executes on the
SuperLink host. Binding the port to loopback is not an option when SuperNodes on other
machines must reach the Fleet API on it.

So this launcher runs flwr's own SuperLink — its argument parser, its FastAPI app
(``flwr.superlink.main.create_app``) and its uvicorn settings — with one ASGI middleware in
front (written here because flwr has no setting for it): a request from a peer outside
``--control-allow`` (default: loopback) may reach only ``/v1/fleet/…`` and ``/health``;
everything else (Control, Runtime, the API docs) gets 403 before flwr sees it. It also makes
``--enable-supernode-auth`` mandatory (only keys registered through the now-local Control
API can activate) and refuses flwr's legacy gRPC servers, which would bypass the middleware.

    python -m fedpeft.runtime.flower.superlink [--control-allow CIDR ...] \\
        --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key \\
        --host 0.0.0.0 --port 9093

An operator elsewhere reaches the Control API through an SSH tunnel (``ssh -L
9093:127.0.0.1:9093 superlink-host``: the tunnel's requests come from loopback).
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK = ("127.0.0.0/8", "::1/128")
OPEN_PREFIXES = ("/v1/fleet/",)  # the SuperNodes' API: authenticated by node keys
OPEN_PATHS = ("/health",)
LEGACY_GRPC_ENV = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")
FORBIDDEN = 403
NO_PERMISSIONS = 9  # flwr.supercore.error.ApiErrorCode.NO_PERMISSIONS: what flwr's clients read


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """CIDR blocks (or single addresses); raises ``ValueError`` naming a bad one."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--control-allow {spec!r} is not an IP address or CIDR block"
            ) from None
    return tuple(out)


def is_trusted(host: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether a peer address lies in ``networks`` (IPv4-mapped IPv6 counts as IPv4)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # e.g. a Unix socket peer name: not an address we trust
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in n for n in networks)


def is_open(path: str) -> bool:
    """Paths any peer may reach: the Fleet API and the health check."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class TrustedControl:
    """ASGI middleware: non-open paths only for peers in ``networks``; others get 403 with
    flwr's error body (``{"code", "detail"}``), so ``flwr`` prints it as a permission error."""

    def __init__(self, app: ASGIApp, networks: tuple[Network, ...]) -> None:
        self.app, self.networks = app, networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if is_trusted(client[0] if client else None, self.networks):
            await self.app(scope, receive, send)
            return
        body = (
            b'{"code": %d, "detail": "The SuperLink accepts control and runtime requests only '
            b'from its trusted addresses (--control-allow)."}' % NO_PERMISSIONS
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": FORBIDDEN, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="flower-superlink whose Control and Runtime APIs answer trusted addresses "
        "only; every other argument is flower-superlink's.",
        add_help=False,
    )
    p.add_argument(
        "--control-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="an address or CIDR block trusted with the Control and Runtime APIs (repeatable; "
        "default: loopback only)",
    )
    return p


def flwr_args(rest: list[str]) -> list[str]:
    """flower-superlink's arguments with the secure defaults enforced."""
    if "--insecure" in rest:
        raise SystemExit(
            "error: --insecure is refused: node keys and TLS are what keep strangers out; "
            "give --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile."
        )
    if "--enable-supernode-auth" not in rest:
        rest = [*rest, "--enable-supernode-auth"]  # pre-registered node keys only
    return rest


def main(argv: list[str] | None = None) -> None:
    ours, rest = _parser().parse_known_args(argv)
    try:
        networks = parse_networks(ours.control_allow or LOOPBACK)
    except ValueError as e:
        raise SystemExit(f"error: {e}.") from None
    legacy = [name for name in LEGACY_GRPC_ENV if os.environ.get(name) == "1"]
    if legacy:
        raise SystemExit(
            f"error: {', '.join(legacy)} starts flwr's legacy gRPC API, which bypasses the "
            "trusted-address check; unset it."
        )
    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    # the module, not the same-named function that flwr.superlink.cli exports
    fsl = importlib.import_module("flwr.superlink.cli.flower_superlink")
    sys.argv = ["flower-superlink", *flwr_args(rest)]
    config = fsl._parse_superlink_lifespan_config()  # flwr's own parsing and checks
    app = create_app(config, fsl.SuperLinkLifespan)
    app.add_middleware(TrustedControl, networks=networks)  # outermost: before flwr's code
    uvicorn.run(  # as fsl._run_superlink_http_api does
        app=app,
        host=config.host,
        port=config.port,
        reload=False,
        access_log=True,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        workers=1,
    )


if __name__ == "__main__":
    main()
