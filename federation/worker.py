"""A warm local trainer behind a thin ClientApp, so a round does not pay for importing torch.

Flower 1.41's SuperNode starts a fresh `flwr-clientapp` process for every message; a ClientApp that
imports torch + transformers and reloads the model and data costs seconds per round before it trains.
Here the member's long-lived `rewardnode federation run` process keeps the participant (model,
tokenized data, identity) in memory and serves it on a Unix socket inside the node home
(mode 0600); the ClientApp (`federation.worker:client_app`) only relays the round's global arrays
to it and the signed update back. Everything is signed in the worker, exactly as `contribute` does
in-process; the relay adds nothing to what leaves the node.

Frames on the socket: 4-byte big-endian length + canonical JSON header, then 8-byte length +
`encode_arrays` bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from federation.apps import (
    KEY_CHAIN,
    KEY_STATUS,
    REC_CONFIG,
    REC_GLOBAL,
    Participant,
    contribute,
    from_record,
    train_reply,
    train_request,
)
from federation.codec import Arrays, decode_arrays, encode_arrays
from federation.errors import FederationError
from protocol.canonical import canonical_json, parse_json

log = logging.getLogger(__name__)

NODE_CONFIG_SOCKET = "worker-socket"
"""--node-config key: the Unix socket of the member's warm worker."""


def _send(sock: socket.socket, header: dict[str, Any], arrays: Arrays | None = None) -> None:
    head = canonical_json(header)
    body = encode_arrays(arrays) if arrays is not None else b""
    sock.sendall(struct.pack(">I", len(head)) + head + struct.pack(">Q", len(body)) + body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the worker connection closed mid-frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> tuple[dict[str, Any], Arrays | None]:
    (n_head,) = struct.unpack(">I", _recv_exact(sock, 4))
    header = parse_json(_recv_exact(sock, n_head))
    (n_body,) = struct.unpack(">Q", _recv_exact(sock, 8))
    arrays = decode_arrays(_recv_exact(sock, n_body)) if n_body else None
    if not isinstance(header, dict):
        raise ValueError("worker frame header is not an object")
    return header, arrays


class Worker:
    """Serves one participant on a Unix socket, one request at a time, in a daemon thread."""

    def __init__(self, participant: Participant, path: Path) -> None:
        self.participant = participant
        self.path = path
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old)
        self._sock.listen(4)
        self._thread = threading.Thread(target=self._serve, name="federation-worker", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    self._handle(conn)
                except Exception as exc:  # report to the relay, keep serving
                    log.exception("worker request failed")
                    try:
                        _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
                    except OSError:
                        pass

    def _handle(self, conn: socket.socket) -> None:
        header, arrays = _recv(conn)
        if arrays is None:
            raise ValueError("request without arrays")
        if header.get("op") == "train":
            update, envelope, metrics = contribute(self.participant, str(header["federation_id"]),
                                                   int(header["round"]), arrays)
            _send(conn, {"envelope": envelope, "metrics": metrics}, update)
        elif header.get("op") == "finalize":
            model_id = self.participant.finalize(arrays, [str(x) for x in header["chain"]])
            _send(conn, {"model_id": model_id})
        else:
            raise ValueError(f"unknown op {header.get('op')!r}")

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)


def call(path: str, header: dict[str, Any], arrays: Arrays, timeout_s: float = 3600.0) -> tuple[
        dict[str, Any], Arrays | None]:
    """One request to the worker at `path`; raises FederationError with the worker's error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError as exc:
            raise FederationError(f"no federation worker at {path} ({exc}); run `rewardnode federation run` on "
                                  "this member") from None
        _send(sock, header, arrays)
        reply, out = _recv(sock)
    if "error" in reply:
        raise FederationError(f"the member's worker failed: {reply['error']}")
    return reply, out


def make_relay_client_app() -> ClientApp:
    """A ClientApp that forwards `train` / `query.finalize` to the warm worker named in the node config."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        federation_id, rnd, global_arrays = train_request(msg)
        reply, update = call(str(context.node_config[NODE_CONFIG_SOCKET]),
                             {"op": "train", "federation_id": federation_id, "round": rnd}, global_arrays)
        if update is None:
            raise FederationError("the worker sent no update")
        metrics = {str(k): float(v) for k, v in dict(reply["metrics"]).items()}
        return Message(train_reply(update, str(reply["envelope"]), metrics), reply_to=msg)

    @app.query("finalize")
    def finalize(msg: Message, context: Context) -> Message:
        chain = [str(x) for x in msg.content.config_records[REC_CONFIG][KEY_CHAIN]]  # type: ignore[union-attr]
        reply, _ = call(str(context.node_config[NODE_CONFIG_SOCKET]), {"op": "finalize", "chain": chain},
                        from_record(msg.content.array_records[REC_GLOBAL]))
        content = RecordDict({REC_CONFIG: ConfigRecord({KEY_STATUS: "registered", "model-id": str(reply["model_id"])})})
        return Message(content, reply_to=msg)

    return app


client_app = make_relay_client_app()
"""`federation.worker:client_app`: the component the deployment engine's app names."""
