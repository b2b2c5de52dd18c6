"""Flower (1.41 Message API) apps: the coordinator's ServerApp loop and each member's ClientApp.

Per round the ServerApp sends every connected node a `train` message (global arrays + round config);
each ClientApp trains on its own store, signs its update and replies with the update arrays, the
signed contribution envelope and its example count. Nothing else leaves a node: no text, no
token ids, no per-example values. After the last round a `query.finalize` message carries the
final global arrays and the manifest chain, which each member verifies before registering the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from numpy.typing import NDArray

from federation.aggregation import dp_privatize, flatten, unflatten
from federation.agreement import Agreement
from federation.codec import Arrays
from federation.contribution import MEMBER_ERROR, NO_REPLY, Rejection, sign_contribution
from federation.errors import BelowQuorum, FederationError
from federation.rounds import FederationState, RoundResult
from protocol.identity import Identity

log = logging.getLogger(__name__)

MEMBER_ERROR_CODES = frozenset({ErrorCode.LOAD_CLIENT_APP_EXCEPTION, ErrorCode.CLIENT_APP_RAISED_EXCEPTION})
"""Error replies that carry the member's own failure (its ClientApp did not load, or raised)."""

# Wire keys: record names and config keys, spelled once.
MSG_TRAIN = "train"
MSG_FINALIZE = "query.finalize"
REC_GLOBAL = "global"
REC_CONFIG = "config"
REC_UPDATE = "update"
REC_CONTRIBUTION = "contribution"
REC_METRICS = "metrics"
KEY_ROUND = "round"
KEY_FEDERATION = "federation-id"
KEY_ENVELOPE = "envelope"
KEY_CHAIN = "manifests"
KEY_NUM_EXAMPLES = "num-examples"
KEY_STATUS = "status"


class Participant(Protocol):
    """A member node as the ClientApp sees it: its key, the agreement and its private trainer."""

    identity: Identity
    agreement: Agreement

    def train(self, global_arrays: Arrays, round: int) -> tuple[Arrays, int, dict[str, float]]:
        """Train on local data from `global_arrays`; return the new shared arrays, #examples, metrics."""
        ...

    def finalize(self, global_arrays: Arrays, chain: list[str]) -> str:
        """Verify the chain and register the federated model; return its registry id."""
        ...


def to_record(arrays: Mapping[str, NDArray[np.floating]]) -> ArrayRecord:
    return ArrayRecord({n: Array(np.ascontiguousarray(a, dtype=np.float32)) for n, a in arrays.items()})


def from_record(record: ArrayRecord) -> Arrays:
    return {n: np.asarray(a.numpy(), dtype=np.float32) for n, a in record.items()}


# --- member side -------------------------------------------------------------------------------------


def contribute(participant: Participant, federation_id: str, rnd: int,
               global_arrays: Arrays) -> tuple[Arrays, str, dict[str, float]]:
    """Train, (optionally) privatize and sign one round's update: (update, envelope JSON, metrics)."""
    a = participant.agreement
    if federation_id != a.federation_id:
        raise FederationError(f"the coordinator asked for federation {federation_id[:16]}..., this node "
                              f"joined {a.federation_id[:16]}...; re-join with the current agreement")
    t0 = time.perf_counter()
    local, n_examples, metrics = participant.train(global_arrays, rnd)
    t1 = time.perf_counter()
    names = sorted(global_arrays)
    delta = flatten(local, names) - flatten(global_arrays, names)  # (D,) what this node learned this round
    if a.dp_clip_norm > 0:
        delta = dp_privatize(delta, a.dp_clip_norm, a.dp_noise_multiplier, np.random.default_rng())
    update = unflatten(delta, global_arrays, names)
    env = sign_contribution(participant.identity, update, federation_id=a.federation_id, round=rnd,
                            base_model_sha256=a.base_model_sha256, num_examples=n_examples)
    envelope = env.to_json()
    metrics = {**metrics, "train-seconds": t1 - t0, "sign-seconds": time.perf_counter() - t1,
               KEY_NUM_EXAMPLES: float(n_examples)}
    return update, envelope, metrics


def train_reply(update: Arrays, envelope: str, metrics: dict[str, float]) -> RecordDict:
    """The reply content of a `train` message: update arrays, signed envelope, metrics. Nothing else."""
    return RecordDict({
        REC_UPDATE: to_record(update),
        REC_CONTRIBUTION: ConfigRecord({KEY_ENVELOPE: envelope}),
        REC_METRICS: MetricRecord({k: float(v) for k, v in metrics.items()}),
    })


def train_request(msg: Message) -> tuple[str, int, Arrays]:
    """(federation id, round, global arrays) of a `train` message."""
    cfg = msg.content.config_records[REC_CONFIG]
    return str(cfg[KEY_FEDERATION]), int(cfg[KEY_ROUND]), from_record(msg.content.array_records[REC_GLOBAL])  # type: ignore[arg-type]


def handle_train(participant: Participant, msg: Message) -> RecordDict:
    """Train, (optionally) privatize and sign one round's update."""
    return train_reply(*contribute(participant, *train_request(msg)))


def handle_finalize(participant: Participant, msg: Message) -> RecordDict:
    chain = [str(x) for x in msg.content.config_records[REC_CONFIG][KEY_CHAIN]]  # type: ignore[union-attr]
    model_id = participant.finalize(from_record(msg.content.array_records[REC_GLOBAL]), chain)
    return RecordDict({REC_CONFIG: ConfigRecord({KEY_STATUS: "registered", "model-id": model_id})})


def make_client_app(participant_for: Callable[[Context], Participant]) -> ClientApp:
    """A ClientApp whose `participant_for(context)` opens the node this SuperNode serves."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(handle_train(participant_for(context), msg), reply_to=msg)

    @app.query("finalize")
    def finalize(msg: Message, context: Context) -> Message:
        return Message(handle_finalize(participant_for(context), msg), reply_to=msg)

    return app


# --- coordinator side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FederationOutcome:
    """The result of `run_federation`."""

    rounds: tuple[RoundResult, ...]
    final: Arrays
    chain: tuple[str, ...]
    registered: dict[int, str]
    """Flower node id -> model id each member reported after finalize."""
    round_seconds: tuple[float, ...]
    train_seconds: tuple[float, ...]
    """Slowest member's own training time per round (round_seconds minus this is the overhead)."""
    crypto_seconds: tuple[float, ...] = ()
    """Per round: the slowest member's signing (update hash + Ed25519) plus the coordinator's
    verification, aggregation and manifest signing."""


def wait_for_nodes(grid: Grid, n: int, timeout_s: float, poll_s: float = 0.2) -> list[int]:
    """Node ids once at least `n` are connected (or whatever is there at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= n or time.monotonic() >= deadline:
            return ids
        time.sleep(poll_s)


def _seconds(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key, 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


def _collect(replies: Iterable[Message], sent: dict[str, int]) -> tuple[
        list[tuple[str, Arrays]], list[Rejection], float, float]:
    raw: list[tuple[str, Arrays]] = []
    rejected: list[Rejection] = []
    slowest = sign = 0.0
    answered: set[str] = set()
    for reply in replies:
        answered.add(reply.metadata.reply_to_message_id)
        node = sent.get(reply.metadata.reply_to_message_id, -1)
        if reply.has_error():
            # The member's ClientApp failed to load or raised: its own error. Anything else (node or
            # reply unavailable, app process crashed or killed) is the member not answering.
            reason = MEMBER_ERROR if reply.error.code in MEMBER_ERROR_CODES else NO_REPLY
            rejected.append(Rejection("", reason, f"node {node} replied with an error: {str(reply.error.reason)[:200]}"))
            continue
        try:
            content = reply.content
            env = str(content.config_records[REC_CONTRIBUTION][KEY_ENVELOPE])
            raw.append((env, from_record(content.array_records[REC_UPDATE])))
            metrics = content.metric_records[REC_METRICS]
            slowest = max(slowest, _seconds(metrics, "train-seconds"))
            sign = max(sign, _seconds(metrics, "sign-seconds"))
        except (KeyError, TypeError, ValueError) as exc:
            rejected.append(Rejection("", "malformed", f"node {node} sent a reply without update/contribution: {exc}"))
    for mid, node in sent.items():
        if mid not in answered:
            rejected.append(Rejection("", NO_REPLY, f"node {node} did not reply in time (crashed or too slow)"))
    return raw, rejected, slowest, sign


STRAGGLER_WAIT_S = 10.0
"""Once a round has its quorum of replies, how much longer the coordinator waits for the rest."""


def send_and_receive(grid: Grid, messages: list[Message], timeout_s: float, poll_s: float = 0.05, *,
                     quorum: int | None = None, straggler_s: float = STRAGGLER_WAIT_S,
                     ) -> tuple[list[Message], dict[str, int]]:
    """`Grid.send_and_receive` with a short poll (Flower 1.41's HttpGrid sleeps 3 s between pulls).

    Waits for every reply until `timeout_s`; once `quorum` replies without error are in, waits at most
    `straggler_s` more. Flower notices a member that died mid-round only when it misses two heartbeats
    (20 s with federation.deployment's SuperNodes, a minute with Flower's default); without this a dead
    member could cost the whole round timeout.
    Returns the replies and {message id: destination node id} of what was sent."""
    pushed = list(grid.push_messages(messages))
    sent = {mid: m.metadata.dst_node_id for mid, m in zip(pushed, messages, strict=True)}
    ids = set(pushed)
    deadline = time.monotonic() + timeout_s
    out: list[Message] = []
    quorum_met = False
    while ids and time.monotonic() < deadline:
        got = list(grid.pull_messages(ids))
        out.extend(got)
        ids -= {m.metadata.reply_to_message_id for m in got}
        if not quorum_met and quorum is not None and sum(not m.has_error() for m in out) >= quorum:
            quorum_met = True
            deadline = min(deadline, time.monotonic() + straggler_s)
        if ids:
            time.sleep(poll_s)
    return out, sent


def run_federation(grid: Grid, state: FederationState, *, on_round: Callable[[RoundResult], None] | None = None,
                   node_wait_s: float = 60.0, finalize: bool = True,
                   straggler_s: float = STRAGGLER_WAIT_S) -> FederationOutcome:
    """Run every remaining round of the agreement on `grid`, then finalize on every member.

    A round waits for every member until the agreement's round timeout, but at most `straggler_s` once
    min_participants replied; finalize likewise once the last round's contributors acknowledged.

    Raises `BelowQuorum` (after `on_round` saw every finished round) when a round falls short.
    """
    a = state.agreement
    results: list[RoundResult] = []
    round_s: list[float] = []
    train_s: list[float] = []
    crypto_s: list[float] = []
    peak = 0  # the most members connected at a round start so far
    while state.round < a.rounds:
        rnd = state.round + 1
        # Give members that were here before (one restarting after a crash, say) up to the straggler wait
        # to be back; below the quorum wait up to node_wait_s.
        nodes = wait_for_nodes(grid, max(peak, a.min_participants), min(straggler_s, node_wait_s))
        if len(nodes) < a.min_participants:
            nodes = wait_for_nodes(grid, a.min_participants, node_wait_s)
        peak = max(peak, len(nodes))
        t0 = time.perf_counter()
        content = RecordDict({
            REC_GLOBAL: to_record(state.global_arrays),
            REC_CONFIG: ConfigRecord({KEY_ROUND: rnd, KEY_FEDERATION: a.federation_id}),
        })
        messages = [Message(content, dst_node_id=n, message_type=MSG_TRAIN, group_id=str(rnd)) for n in nodes]
        replies, sent = send_and_receive(grid, messages, a.round_timeout_s, quorum=a.min_participants,
                                         straggler_s=straggler_s)
        raw, no_reply, slowest, sign = _collect(replies, sent)
        t1 = time.perf_counter()
        result = state.finish_round(raw, no_reply)  # raises BelowQuorum
        crypto_s.append(sign + time.perf_counter() - t1)
        round_s.append(time.perf_counter() - t0)
        train_s.append(slowest)
        results.append(result)
        if on_round is not None:
            on_round(result)
    registered: dict[int, str] = {}
    if not finalize:
        return FederationOutcome(tuple(results), state.global_arrays, tuple(state.chain), registered,
                                 tuple(round_s), tuple(train_s), tuple(crypto_s))
    nodes = sorted(grid.get_node_ids())
    content = RecordDict({REC_GLOBAL: to_record(state.global_arrays),
                          REC_CONFIG: ConfigRecord({KEY_CHAIN: list(state.chain)})})
    messages = [Message(content, dst_node_id=n, message_type=MSG_FINALIZE, group_id="final") for n in nodes]
    quorum = results[-1].valid if results else len(nodes)
    t0 = time.perf_counter()
    replies, sent = send_and_receive(grid, messages, a.round_timeout_s, quorum=quorum, straggler_s=straggler_s)
    for reply in replies:
        if not reply.has_error():
            registered[reply.metadata.src_node_id] = str(reply.content.config_records[REC_CONFIG]["model-id"])
        else:
            log.warning("finalize failed on node %d: %s", reply.metadata.src_node_id, str(reply.error.reason)[:300])
    log.log(logging.INFO if len(registered) == len(nodes) else logging.WARNING, "finalize: %d of %d node(s) registered the federated model in %.1fs (nodes %s; sent to %s)",
             len(registered), len(nodes), time.perf_counter() - t0, sorted(registered), sorted(sent.values()))
    return FederationOutcome(tuple(results), state.global_arrays, tuple(state.chain), registered,
                             tuple(round_s), tuple(train_s), tuple(crypto_s))


def make_server_app(state_for: Callable[[Context], FederationState],
                    on_done: Callable[[FederationOutcome], None] | None = None,
                    on_round: Callable[[RoundResult], None] | None = None, finalize: bool = True,
                    straggler_for: Callable[[Context], float] | None = None) -> ServerApp:
    """A ServerApp running `run_federation` on the coordinator's state (`straggler_for(context)`: the
    straggler wait, default STRAGGLER_WAIT_S)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            straggler_s = STRAGGLER_WAIT_S if straggler_for is None else straggler_for(context)
            outcome = run_federation(grid, state_for(context), on_round=on_round, finalize=finalize,
                                     straggler_s=straggler_s)
        except BelowQuorum as exc:
            log.error("%s", exc)
            raise
        if on_done is not None:
            on_done(outcome)

    return app
