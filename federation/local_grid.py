"""An in-process Flower `Grid`: delivers the ServerApp's messages to ClientApps in threads.

It runs the same ServerApp logic and the same ClientApp objects as the deployment engine, without
the SuperLink's gRPC hop, so tests and `scripts/simulate_federation.py` exercise the real
handlers on one machine without Ray. `on_reply` sees every reply a ClientApp sends (the privacy
test captures payloads there); `kill(node_id)` makes a node stop answering, like a SIGKILLed SuperNode.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SUPERLINK_NODE_ID = 0
ERROR_CODE_CLIENT_EXCEPTION = 1


class LocalGrid(Grid):
    """Routes messages to `{node_id: (ClientApp, Context)}` in a thread pool."""

    def __init__(self, nodes: dict[int, tuple[ClientApp, Context]],
                 on_reply: Callable[[int, Message], None] | None = None) -> None:
        self._nodes = nodes
        self._on_reply = on_reply
        self._run = Run.create_empty(run_id=1)
        self._pool = ThreadPoolExecutor(max_workers=max(len(nodes), 1), thread_name_prefix="clientapp")
        self._pending: dict[str, Future[Message | None]] = {}
        self._dead: set[int] = set()
        self._lock = threading.Lock()
        # What the SuperLink's ServerApp process sets: the identity `Message(...)` stamps on instructions.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, self._run.run_id, SUPERLINK_NODE_ID

    # --- Grid API ------------------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._nodes if n not in self._dead]

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=n) for n in self.get_node_ids()]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            msg.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            with self._lock:
                self._pending[msg.metadata.message_id] = self._pool.submit(self._deliver, msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        with self._lock:
            for mid in list(message_ids):
                fut = self._pending.get(mid)
                reply = fut.result() if fut is not None and fut.done() else None
                if reply is not None:
                    out.append(reply)
                    del self._pending[mid]
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Message] = []
        while ids and (deadline is None or time.monotonic() < deadline):
            got = list(self.pull_messages(ids))
            out.extend(got)
            ids -= {m.metadata.reply_to_message_id for m in got}
            if ids:
                time.sleep(0.005)
        return out

    # --- faults and shutdown -------------------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        """From now on the node neither replies nor is listed (its in-flight work is discarded)."""
        self._dead.add(node_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        app, context = self._nodes[node]
        inbound = Message(copy.deepcopy(msg.content), node, msg.metadata.message_type,
                          group_id=msg.metadata.group_id)
        inbound.metadata.__dict__.update({k: v for k, v in msg.metadata.__dict__.items() if k != "_dst_node_id"})
        try:
            reply = app(inbound, context)
        except Exception as exc:  # the ClientApp crashed: Flower turns that into an error reply
            reply = Message(Error(code=ERROR_CODE_CLIENT_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                            reply_to=inbound)
        if node in self._dead:
            return None  # a killed node's reply never arrives
        reply.metadata.__dict__["_src_node_id"] = node
        if self._on_reply is not None:
            self._on_reply(node, reply)
        return reply
