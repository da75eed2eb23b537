"""The client host: one long-lived process per SuperNode that keeps the base model loaded.

flwr 1.42's SuperNode starts a fresh ``flwr-clientapp`` process for every message (its
SuperExec's subprocess executor), so a ClientApp alone would import torch and rebuild
the model every round. Started next to a SuperNode whose node config names its socket
(``host-socket="PATH"``), this process builds the task on the first request and serves
every later one from memory; the ClientApp process only forwards bytes to it.

Wire: a Unix-domain socket (a path on this machine, mode 0600), frames of a JSON header
and raw payload bytes — fedpeft's safetensors payloads, never pickle::

    request:  u32 header length | JSON header | u64 payload length | payload
    response: the same layout; header {"ok": bool, "error": str, ...}

A ``fit`` or ``evaluate`` request also carries the client's kept states, which its node
keeps in the ClientApp's ``Context`` state, and the response the states to keep: their
fedpeft payload (``client.state.pack``) is the payload's last ``kept`` bytes (a header
field). The host holds none of them between messages (``process.kept_reply``).

A secure-aggregation stage's request also carries the node's round secrets in its header
(``secrets``: fedpeft's safetensors payload, base64) and its response the secrets to keep:
the ClientApp keeps them in the node's ``Context`` state, so the host holds none between
messages, like any other process that answers a stage (``process.secure_reply``).

``python -m fedpeft.runtime.flower.host --socket PATH`` runs it (until SIGTERM).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import socket
import socketserver
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedpeft.client import ClientState
    from fedpeft.runtime.flower.process import Kept

log = logging.getLogger("fedpeft.runtime.flower.host")
MAX_HEADER = 16 << 20  # a config and an instruction, never this large
MAX_PAYLOAD = 4 << 30


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection mid-frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def send_frame(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(head)) + head + struct.pack(">Q", len(payload)))
    sock.sendall(payload)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack(">I", _read_exact(sock, 4))
    if n > MAX_HEADER:
        raise ValueError(f"frame header of {n} bytes is too large")
    header = json.loads(_read_exact(sock, n))
    (m,) = struct.unpack(">Q", _read_exact(sock, 8))
    if m > MAX_PAYLOAD or not isinstance(header, dict):
        raise ValueError("malformed frame")
    return header, _read_exact(sock, m)


def handle(header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
    """One request, by the same code a ClientApp process runs without a host."""
    from fedpeft.runtime.flower.codec import instruction_from_fields
    from fedpeft.runtime.flower.process import hello_info, kept_reply

    text, own = str(header["config"]), bool(header.get("own", False))
    if header.get("op") == "hello":
        partition = int(header["partition"])
        info = hello_info(text, partition, header["upload"], header["download"], own)
        return {"ok": True, **info}, b""
    if header.get("op") in ("fit", "evaluate"):
        instruction = instruction_from_fields(dict(header["instruction"]))
        if header["op"] == "fit" and "secrets" in header:  # a secure-aggregation stage
            from fedpeft.runtime.flower.process import secure_reply

            secrets = unpack_secrets(str(header["secrets"]))
            payload, kept = split_kept(payload, header.get("kept", 0))
            reply, info, secrets, kept = secure_reply(
                text, instruction, payload, secrets, kept, own
            )
            tail, out = join_kept(reply, kept)
            return {"ok": True, **info, "secrets": pack_secrets(secrets), "kept": tail}, out
        evaluate = header["op"] == "evaluate"
        payload, kept = split_kept(payload, header.get("kept", 0))
        reply, info, kept = kept_reply(text, instruction, payload, kept, own, evaluate)
        tail, out = join_kept(reply, kept)
        return {"ok": True, **info, "kept": tail}, out
    raise ValueError(f"unknown op {header.get('op')!r}")


def pack_secrets(secrets: ClientState) -> str:
    """A round's client secrets as header text (fedpeft's tensor payload, base64)."""
    from fedpeft.compression import encode

    return base64.b64encode(encode(secrets)).decode("ascii") if secrets else ""


def unpack_secrets(text: str) -> ClientState:
    """The inverse of ``pack_secrets`` (``CodecError`` or ``ValueError`` when malformed)."""
    from fedpeft.compression import decode

    return decode(base64.b64decode(text, validate=True))[0] if text else {}


def join_kept(payload: bytes, kept: Kept) -> tuple[int, bytes]:
    """(length of the tail, ``payload`` followed by ``kept`` as one fedpeft payload)."""
    from fedpeft.client.state import pack
    from fedpeft.compression import encode

    tail = encode(pack(kept)) if kept else b""
    return len(tail), payload + tail


def split_kept(data: bytes, tail: object) -> tuple[bytes, Kept]:
    """The inverse of ``join_kept``: (payload, kept states); ``ValueError`` if malformed."""
    from fedpeft.client.state import unpack
    from fedpeft.compression import decode

    if not isinstance(tail, int) or isinstance(tail, bool) or not 0 <= tail <= len(data):
        raise ValueError(f"kept-state length {tail!r} does not fit a {len(data)}-byte payload")
    cut = len(data) - tail
    return data[:cut], (unpack(decode(data[cut:])[0]) if tail else {})


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            header, payload = recv_frame(sock)
            reply, out = handle(header, payload)
        except Exception as e:  # noqa: BLE001 - reported to the ClientApp, which reports it
            log.warning("request failed: %s: %s", type(e).__name__, e)
            reply, out = {"ok": False, "error": f"{type(e).__name__}: {e}"}, b""
        send_frame(sock, reply, out)


def request(
    path: str, header: dict[str, Any], payload: bytes = b""
) -> tuple[dict[str, Any], bytes]:
    """One round trip to the host at ``path``; raises ``RuntimeError`` if it failed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            send_frame(sock, header, payload)
            reply, out = recv_frame(sock)
        except OSError as e:  # not started, or died: the node's operator has to act
            raise RuntimeError(
                f"this node's client host at {path} did not answer ({e}); start it with "
                f"`python -m fedpeft.runtime.flower.host --socket {path}`, or drop "
                "host-socket from the node config."
            ) from None
    if not reply.get("ok"):
        raise RuntimeError(f"client host: {reply.get('error', 'unknown error')}")
    return reply, out


def serve(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        server = socketserver.UnixStreamServer(str(path), _Handler)
    finally:
        os.umask(old)
    log.info("fedpeft client host %d serving on %s", os.getpid(), path)
    with server:
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    serve(args.socket)


if __name__ == "__main__":
    main()
