"""A federation is a named agreement, signed by its coordinator: who takes part and how rounds run.

The agreement file is a protocol envelope (type `AGREEMENT_TYPE`) whose payload is the canonical
JSON of `Agreement`. Its `federation_id` is the SHA-256 of that payload, so changing any setting makes
another federation, and every contribution and manifest names the one it belongs to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.aggregation import STRATEGIES
from federation.errors import FederationError
from protocol.canonical import canonical_json, parse_json, sha256_hex
from protocol.envelope import Envelope, Verifier, sign_envelope
from protocol.errors import EnvelopeError
from protocol.identity import Identity, PublicKey

AGREEMENT_TYPE = "rewardnode/federation/agreement"
SHARES = ("lora", "full")
"""What leaves a node: the LoRA adapters + reward head (default), or every weight."""
AGREEMENT_MAX_AGE_S = 10**9 - 1
"""An agreement (like a manifest) is a long-lived record: it is checked for signature, not freshness."""


@dataclass(frozen=True)
class Agreement:
    """The settings every member of a federation signs up to."""

    name: str
    """Human name of the federation, e.g. "hospitals-2026"."""
    coordinator: str
    """Ed25519 public key (hex) of the node that runs the SuperLink and signs manifests."""
    members: tuple[str, ...]
    """Public keys (hex) allowed to contribute; the coordinator is a member only if listed."""
    base_model: str
    """Backbone every member starts from ("minilm" or a local folder path on each node)."""
    base_model_sha256: str
    """SHA-256 of the backbone's weight file: members refuse to train on another one."""
    share: str = "lora"
    """"lora": adapters + reward head leave the node; "full": all weights."""
    strategy: str = "fedavg"
    """Aggregation rule: fedavg | median | trimmed-mean | krum."""
    rounds: int = 3
    """Number of federated rounds."""
    min_participants: int = 2
    """A round aggregates only if at least this many valid contributions arrive."""
    local_epochs: int = 1
    """Epochs each member trains on its own data per round."""
    learning_rate: float = 1e-3
    """Local AdamW learning rate."""
    batch_size: int = 8
    """Local batch size (pairs)."""
    max_length: int = 128
    """Token budget of prompt + response."""
    lora_r: int = 8
    """LoRA rank (share == "lora")."""
    lora_alpha: int = 16
    """LoRA alpha (share == "lora")."""
    trim_fraction: float = 0.2
    """Trimmed mean: fraction cut at each end per coordinate."""
    n_byzantine: int = 1
    """Krum: number of faulty members tolerated."""
    clip_norm: float = 0.0
    """Server-side clipping of each update's L2 norm before aggregation (0 = off)."""
    dp_clip_norm: float = 0.0
    """Client-side DP: clip each update to this L2 norm (0 = DP off)."""
    dp_noise_multiplier: float = 0.0
    """Client-side DP: Gaussian noise std = multiplier x dp_clip_norm."""
    round_timeout_s: float = 600.0
    """How long the coordinator waits for replies in a round."""
    seed: int = 0
    """Seed of the initial head / adapter weights."""

    def __post_init__(self) -> None:
        for key in (self.coordinator, *self.members):
            PublicKey.parse(key)
        if not self.members:
            raise FederationError("an agreement needs at least one member; pass --member KEY")
        if len(set(self.members)) != len(self.members):
            raise FederationError("a member key is listed twice; list each member once")
        if self.strategy not in STRATEGIES:
            raise FederationError(f"strategy {self.strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
        if self.share not in SHARES:
            raise FederationError(f"share {self.share!r} is unknown; use one of {', '.join(SHARES)}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise FederationError("rounds and local_epochs must be >= 1")
        if not 1 <= self.min_participants <= len(self.members):
            raise FederationError(
                f"min_participants = {self.min_participants} must be in [1, {len(self.members)}] (the member count)"
            )

    @property
    def federation_id(self) -> str:
        """SHA-256 hex of the canonical payload: the federation's identity."""
        return sha256_hex(self.payload())

    def payload(self) -> bytes:
        """Canonical JSON of every field."""
        return canonical_json(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["members"] = list(self.members)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Agreement:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FederationError(f"agreement has unknown field(s) {unknown}; upgrade rewardnode")
        return cls(**{**values, "members": tuple(values.get("members", ()))})

    def sign(self, coordinator: Identity) -> Envelope:
        """The agreement as an envelope signed by the coordinator (who must be `self.coordinator`)."""
        if coordinator.public_key_hex != self.coordinator:
            raise FederationError("only the coordinator named in the agreement can sign it; use its identity")
        return sign_envelope(coordinator, AGREEMENT_TYPE, self.payload())


def verify_agreement(data: bytes, *, expected_coordinator: str | None = None) -> Agreement:
    """Parse and check a signed agreement file: canonical, signed by the coordinator it names."""
    try:
        env = Envelope.from_bytes(data)
        agreement = Agreement.from_dict(parse_json(env.payload))
        Verifier({agreement.coordinator}, max_age_s=AGREEMENT_MAX_AGE_S, max_skew_s=AGREEMENT_MAX_AGE_S).verify(
            env, expected_type=AGREEMENT_TYPE, expected_sender=expected_coordinator or agreement.coordinator)
    except (EnvelopeError, ValueError, TypeError) as exc:
        raise FederationError(f"the agreement file does not verify: {exc}") from None
    if env.payload != agreement.payload():
        raise FederationError("the agreement payload is not canonical; ask the coordinator to re-sign it")
    return agreement


def save_agreement(path: Path, envelope: Envelope) -> None:
    """Write the signed agreement (canonical envelope bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(envelope.to_bytes())


def load_agreement(path: Path) -> Agreement:
    """Read and verify an agreement file."""
    if not path.is_file():
        raise FederationError(f"no agreement at {path}; run `rewardnode federation create` or `join --agreement FILE`")
    return verify_agreement(path.read_bytes())
