"""A federation is a named agreement, signed by its coordinator: who takes part and how rounds run.

The agreement file is a protocol envelope (type `AGREEMENT_TYPE`) whose payload is the canonical
JSON of `Agreement`. Its `federation_id` is the SHA-256 of that payload, so changing any setting makes
another federation, and every contribution and manifest names the one it belongs to.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
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
LORA_TARGET_SETS = ("attention", "all-linear")
"""Layers that get LoRA adapters (node.rm.model.LORA_TARGET_SETS): query/value, or every linear layer."""
AGREEMENT_MAX_AGE_S = 10**9 - 1
"""An agreement (like a manifest) is a long-lived record: it is checked for signature, not freshness."""
MIN_MAX_LENGTH = 8
"""Smallest token budget that leaves room for a prompt, a response and a tokenizer's special tokens."""
_INTS = ("rounds", "min_participants", "local_epochs", "batch_size", "max_length", "lora_r", "lora_alpha",
         "n_byzantine", "seed")
_FLOATS = ("learning_rate", "trim_fraction", "clip_norm", "dp_clip_norm", "dp_noise_multiplier", "round_timeout_s",
           "outlier_norm_ratio", "outlier_min_cosine")
_SCREEN_FIELDS = ("screen_outliers", "outlier_norm_ratio", "outlier_min_cosine")

CREATE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"lora_targets": "all-linear", "lora_r": 16, "lora_alpha": 32, "learning_rate": 5e-4,
             "batch_size": 16, "max_length": 256, "mean_pool_init": True},
    "full": {"learning_rate": 5e-5, "batch_size": 16, "max_length": 256, "mean_pool_init": True},
}
"""The training settings `federation create` writes, by what is shared, where its flags are not given: the
best measured in the four-organization benchmark (README, Performance). The dataclass defaults below are
what an agreement file means when it lacks a setting (files written before the setting existed), so
they stay as they were."""


class InvalidSetting(FederationError):
    """One agreement setting is out of range: `field`, its `value`, the `problem` and the `fix`."""

    def __init__(self, field: str, value: object, problem: str, fix: str) -> None:
        self.field, self.value, self.problem, self.fix = field, value, problem, fix
        super().__init__(f"{field} = {show_value(value)}: {problem}; {fix}")


def show_value(value: object) -> str:
    """A setting's value as a user typed it: -1 rather than -1.0, strings quoted."""
    if isinstance(value, float):
        return format(value, "g")
    return repr(value) if isinstance(value, str) else str(value)


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
    lora_targets: str = "attention"
    """Layers with adapters (share == "lora"): "attention" (query/value) or "all-linear". Written into
    the agreement only when not "attention", so agreements made before the setting keep their ids."""
    trim_fraction: float = 0.2
    """Trimmed mean: fraction cut at each end per coordinate."""
    n_byzantine: int = 1
    """Krum: number of faulty members tolerated."""
    clip_norm: float = 0.0
    """Server-side clipping of each update's L2 norm before aggregation (0 = off)."""
    screen_outliers: bool = False
    """Leave out of each round (recorded in its manifest as rejections, reason "outlier-update") the updates
    whose norm or direction is an outlier among the round's (federation.aggregation.screen_outliers), then
    aggregate the rest with `strategy`. Written into the agreement, with the two limits below, only when on
    or when a limit is changed, so agreements made before the setting keep their ids."""
    outlier_norm_ratio: float = 3.0
    """screen_outliers: largest update L2 norm allowed, as a multiple of the round's median norm."""
    outlier_min_cosine: float = -0.5
    """screen_outliers: smallest cosine allowed between an update and the coordinate-wise median of the
    round's other updates (noisy updates of honest members sit near 0, so keep it well below 0)."""
    dp_clip_norm: float = 0.0
    """Client-side DP: clip each update to this L2 norm (0 = DP off)."""
    dp_noise_multiplier: float = 0.0
    """Client-side DP: Gaussian noise std = multiplier x dp_clip_norm."""
    round_timeout_s: float = 600.0
    """How long the coordinator waits for replies in a round."""
    seed: int = 0
    """Seed of the initial head / adapter weights."""
    mean_pool_init: bool = False
    """Start the reward from the mean of the tokens (node.rm.model.init_mean_pooling; `federation
    create --mean-pool-init`). Written into the agreement only when on, so agreements made before the
    setting existed keep their federation ids."""

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
        if self.lora_targets not in LORA_TARGET_SETS:
            raise InvalidSetting("lora_targets", self.lora_targets, "is unknown",
                                 f"use one of {', '.join(LORA_TARGET_SETS)}")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Every numeric setting in range (the bounds of `rewardnode train` where they overlap), so a bad
        value is refused when the agreement is made or read, not by every member in round 1."""
        for name in ("mean_pool_init", "screen_outliers"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidSetting(name, getattr(self, name), "must be true or false", "give a boolean")
        for name in _INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidSetting(name, value, "must be a whole number", "give an integer")
        for name in _FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidSetting(name, value, "must be a finite number", "give a number such as 0.5")
        at_least_one = {"rounds": "3", "local_epochs": "1", "batch_size": "8", "lora_r": "8", "lora_alpha": "16"}
        for name, usual in at_least_one.items():
            if getattr(self, name) < 1:
                raise InvalidSetting(name, getattr(self, name), "must be >= 1",
                                     f"give a positive integer ({usual} is usual)")
        n = len(self.members)
        if self.min_participants < 1:
            raise InvalidSetting("min_participants", self.min_participants, "must be >= 1",
                                 f"give 1 to {n} (the member count, the default)" if n > 1 else "give 1")
        if self.min_participants > n:
            raise InvalidSetting("min_participants", self.min_participants,
                                 f"the federation has {n} member{'s' if n != 1 else ''}",
                                 f"give at most {n}, or add members with --member")
        if self.max_length < MIN_MAX_LENGTH:
            raise InvalidSetting("max_length", self.max_length, f"must be >= {MIN_MAX_LENGTH} (room for the prompt, "
                                 "the response and the special tokens)", "128 is the default")
        if not self.learning_rate > 0:
            raise InvalidSetting("learning_rate", self.learning_rate, "must be > 0", "try 1e-3 (the default)")
        if not self.round_timeout_s > 0:
            raise InvalidSetting("round_timeout_s", self.round_timeout_s, "must be > 0 seconds",
                                 "give the seconds to wait for replies (600 is the default)")
        for name in ("clip_norm", "dp_clip_norm", "dp_noise_multiplier", "n_byzantine"):
            if getattr(self, name) < 0:
                raise InvalidSetting(name, getattr(self, name), "is negative", "use 0 or more (0 switches it off)")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise InvalidSetting("trim_fraction", self.trim_fraction, "must lie in [0, 0.5)",
                                 "0.2 trims a fifth on each side")
        if not self.outlier_norm_ratio > 1:
            raise InvalidSetting("outlier_norm_ratio", self.outlier_norm_ratio, "must be > 1 (the median update "
                                 "itself has ratio 1)", "3 leaves out updates over 3x the median norm")
        if not -1.0 <= self.outlier_min_cosine < 1.0:
            raise InvalidSetting("outlier_min_cosine", self.outlier_min_cosine, "must lie in [-1, 1)",
                                 "-0.5 leaves out updates that point against the others; -1 turns the check off")
        if self.dp_noise_multiplier > 0 and self.dp_clip_norm == 0:
            raise InvalidSetting("dp_noise_multiplier", self.dp_noise_multiplier,
                                 "adds no noise without client-side clipping (std = multiplier x dp_clip_norm)",
                                 "give dp_clip_norm > 0 as well, or leave the multiplier at 0")

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
        if not self.mean_pool_init:  # absent in agreements that predate it: their federation ids stay the same
            del d["mean_pool_init"]
        if self.lora_targets == "attention":  # likewise
            del d["lora_targets"]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if all(d[k] == defaults[k] for k in _SCREEN_FIELDS):  # likewise
            for k in _SCREEN_FIELDS:
                del d[k]
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


TRAINING_SETTINGS = ("learning_rate", "batch_size", "max_length", "mean_pool_init", "lora_targets", "lora_r",
                     "lora_alpha")
"""The settings CREATE_DEFAULTS chooses by what is shared."""


def create_settings(share: str, given: dict[str, Any]) -> dict[str, Any]:
    """The TRAINING_SETTINGS `federation create` writes: each one `given` (not None), else CREATE_DEFAULTS for
    `share`, else the agreement's default (the LoRA settings with share "full"); lora_alpha follows a
    lora_r given alone (twice the rank, the defaults' ratio)."""
    fields = {f.name: f.default for f in dataclasses.fields(Agreement)}
    chosen = {k: given[k] if given.get(k) is not None else CREATE_DEFAULTS[share].get(k, fields[k])
              for k in TRAINING_SETTINGS}
    if given.get("lora_alpha") is None and given.get("lora_r") is not None:
        chosen["lora_alpha"] = 2 * given["lora_r"]
    return chosen


def verify_agreement(data: bytes, *, expected_coordinator: str | None = None) -> Agreement:
    """Parse and check a signed agreement file: canonical, signed by the coordinator it names."""
    try:
        env = Envelope.from_bytes(data)
        values = parse_json(env.payload)
        if not isinstance(values, dict) or not isinstance(values.get("coordinator"), str):
            raise ValueError("its payload is not an agreement (no coordinator key)")
        coordinator = values["coordinator"]  # the signature is checked before any setting is
        Verifier({coordinator}, max_age_s=AGREEMENT_MAX_AGE_S, max_skew_s=AGREEMENT_MAX_AGE_S).verify(
            env, expected_type=AGREEMENT_TYPE, expected_sender=expected_coordinator or coordinator)
        agreement = Agreement.from_dict(values)
    except InvalidSetting as exc:
        raise FederationError(f"the agreement file has an invalid setting: {exc.field} = {show_value(exc.value)}: "
                              f"{exc.problem}; the coordinator must re-create the federation with a valid "
                              f"{exc.field}") from None
    except (EnvelopeError, ValueError, TypeError) as exc:
        raise FederationError(f"the agreement file does not verify: {exc}") from None
    if env.payload != agreement.payload():
        raise FederationError("the agreement payload is not canonical; ask the coordinator to re-sign it")
    return agreement


def save_agreement(path: Path, envelope: Envelope) -> None:
    """Write the signed agreement (canonical envelope bytes), atomically."""
    replace_file(path, envelope.to_bytes())


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`: readers (and a crash) see the old
    file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_agreement(path: Path) -> Agreement:
    """Read and verify an agreement file."""
    if not path.is_file():
        raise FederationError(f"no agreement at {path}; run `rewardnode federation create` or `join --agreement FILE`")
    try:
        return verify_agreement(path.read_bytes())
    except FederationError as exc:
        raise FederationError(f"{path}: {exc}") from None
