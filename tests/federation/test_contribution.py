"""Every rejection reason of a contribution, a round below quorum, and tampered manifest chains."""

from __future__ import annotations

import json

import numpy as np
import pytest

from federation import contribution as c
from federation.agreement import Agreement, verify_agreement
from federation.codec import arrays_sha256
from federation.errors import BelowQuorum, ChainBroken, FederationError
from federation.manifest import verify_chain
from federation.rounds import FederationState
from protocol.envelope import Envelope, Verifier
from protocol.identity import Identity

pytestmark = pytest.mark.e2e  # the end-to-end fault suite: make e2e

COORD = Identity.from_seed(bytes([9]) * 32)
MEMBERS = [Identity.from_seed(bytes([i]) * 32) for i in range(1, 4)]
OUTSIDER = Identity.from_seed(bytes([7]) * 32)
BASE = "ab" * 32
GLOBAL = {"head.weight": np.zeros((1, 4), np.float32), "lora.A": np.zeros((2, 4), np.float32)}


def make_agreement(**kw: object) -> Agreement:
    values: dict[str, object] = dict(name="fed", coordinator=COORD.public_key_hex,
                                     members=tuple(m.public_key_hex for m in MEMBERS), base_model="tiny",
                                     base_model_sha256=BASE, min_participants=2)
    values.update(kw)
    return Agreement(**values)  # type: ignore[arg-type]


def update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=a.shape).astype(np.float32) for n, a in GLOBAL.items()}


def signed(who: Identity, arrays: dict[str, np.ndarray], agreement: Agreement, **kw: object) -> str:
    claim = dict(federation_id=agreement.federation_id, round=1, base_model_sha256=BASE, num_examples=10)
    claim.update(kw)
    return c.sign_contribution(who, arrays, **claim).to_json()  # type: ignore[arg-type]


def round_replies(members: list[Identity], updates: list[dict[str, np.ndarray]],
                  agreement: Agreement) -> list[tuple[str, dict[str, np.ndarray]]]:
    """One round-1 reply per member: (its signed envelope for the update, the update)."""
    return [(signed(m, u, agreement), u) for m, u in zip(members, updates, strict=True)]


@pytest.fixture
def agreement() -> Agreement:
    return make_agreement()


def check(env: str, arrays: dict[str, np.ndarray], agreement: Agreement, verifier: Verifier | None = None):
    ctx = c.RoundContext(agreement.federation_id, 1, BASE, {n: a.shape for n, a in GLOBAL.items()})
    return c.verify_contribution(env, arrays, ctx, verifier or Verifier(set(agreement.members)))


def test_valid_contribution_is_accepted(agreement: Agreement) -> None:
    u = update(0)
    result = check(signed(MEMBERS[0], u, agreement), u, agreement)
    assert isinstance(result, c.Accepted)
    assert result.sender == MEMBERS[0].public_key_hex and result.num_examples == 10
    assert result.update_sha256 == arrays_sha256(u)


def _flip_signature(env_json: str) -> str:
    d = json.loads(env_json)
    d["signature"] = ("0" if d["signature"][0] != "0" else "1") + d["signature"][1:]
    return Envelope(**{**d, "payload": Envelope.from_json(env_json).payload}).to_json()


@pytest.mark.parametrize("case, reason", [
    ("outsider", c.UNKNOWN_KEY),
    ("bad-signature", c.BAD_SIGNATURE),
    ("wrong-round", c.WRONG_ROUND),
    ("wrong-federation", c.WRONG_FEDERATION),
    ("wrong-base", c.WRONG_BASE),
    ("nan", c.NON_FINITE),
    ("inf", c.NON_FINITE),
    ("wrong-shapes", c.WRONG_SHAPES),
    ("missing-array", c.WRONG_SHAPES),
    ("swapped-arrays", c.HASH_MISMATCH),
    ("zero-examples", c.BAD_COUNT),
    ("garbage", c.MALFORMED),
])
def test_each_rejection_reason(agreement: Agreement, case: str, reason: str) -> None:
    u = update(1)
    env, arrays = signed(MEMBERS[0], u, agreement), u
    if case == "outsider":
        env = signed(OUTSIDER, u, agreement)
    elif case == "bad-signature":
        env = _flip_signature(env)
    elif case == "wrong-round":
        env = signed(MEMBERS[0], u, agreement, round=2)
    elif case == "wrong-federation":
        env = signed(MEMBERS[0], u, agreement, federation_id="cd" * 32)
    elif case == "wrong-base":
        env = signed(MEMBERS[0], u, agreement, base_model_sha256="ef" * 32)
    elif case in ("nan", "inf"):
        arrays = {**u, "lora.A": u["lora.A"].copy()}
        arrays["lora.A"][0, 0] = np.nan if case == "nan" else np.inf
        env = signed(MEMBERS[0], arrays, agreement)
    elif case == "wrong-shapes":
        arrays = {**u, "lora.A": np.zeros((3, 4), np.float32)}
        env = signed(MEMBERS[0], arrays, agreement)
    elif case == "missing-array":
        arrays = {"head.weight": u["head.weight"]}
        env = signed(MEMBERS[0], arrays, agreement)
    elif case == "swapped-arrays":
        arrays = update(2)  # signed u, sent other arrays
    elif case == "zero-examples":
        env = signed(MEMBERS[0], u, agreement, num_examples=0)
    elif case == "garbage":
        env = "{not json"
    result = check(env, arrays, agreement)
    assert isinstance(result, c.Rejection), case
    assert result.reason == reason, (case, result)


def test_replayed_nonce_is_rejected(agreement: Agreement) -> None:
    u = update(3)
    env = signed(MEMBERS[0], u, agreement)
    verifier = Verifier(set(agreement.members))
    assert isinstance(check(env, u, agreement, verifier), c.Accepted)
    again = check(env, u, agreement, verifier)
    assert isinstance(again, c.Rejection) and again.reason == c.REPLAYED


def _state(agreement: Agreement) -> FederationState:
    return FederationState(agreement, COORD, GLOBAL)


def test_round_proceeds_without_the_bad_reply_and_manifest_records_it(agreement: Agreement) -> None:
    state = _state(agreement)
    u0, u1, bad = update(10), update(11), update(12)
    bad["lora.A"][0, 0] = np.nan
    replies = [(signed(MEMBERS[0], u0, agreement), u0), (signed(MEMBERS[1], u1, agreement), u1),
               (signed(MEMBERS[2], bad, agreement), bad)]
    result = state.finish_round(replies)
    assert [a.sender for a in result.accepted] == [MEMBERS[0].public_key_hex, MEMBERS[1].public_key_hex]
    assert [(r.sender, r.reason) for r in result.rejected] == [(MEMBERS[2].public_key_hex, c.NON_FINITE)]
    np.testing.assert_allclose(result.global_arrays["lora.A"], (u0["lora.A"] + u1["lora.A"]) / 2, rtol=1e-6)
    manifests = verify_chain(state.chain, agreement, final_sha256=arrays_sha256(result.global_arrays))
    assert manifests[0].rejections[0]["reason"] == c.NON_FINITE


def test_duplicate_sender_and_below_quorum(agreement: Agreement) -> None:
    state = _state(agreement)
    u = update(13)
    replies = [(signed(MEMBERS[0], u, agreement), u), (signed(MEMBERS[0], u, agreement), u)]
    with pytest.raises(BelowQuorum, match="duplicate-sender"):
        state.finish_round(replies)
    assert state.round == 0 and not state.chain  # aborted cleanly: nothing changed


FOUR = [*MEMBERS, OUTSIDER]
"""Four members: the outlier screen compares directions only from four updates up."""


def four_members(**kw: object) -> Agreement:
    return make_agreement(members=tuple(m.public_key_hex for m in FOUR), **kw)


def test_outlier_screen_leaves_out_a_negated_update_and_the_manifest_records_it() -> None:
    """A valid, signed update pointing against the others is left out, named in the manifest, and the
    rest are averaged; the quorum counts it (it verified), so the round goes on with three of four."""
    agreement = four_members(screen_outliers=True, min_participants=4)
    state = _state(agreement)
    base = update(40)
    honest = [{n: a + 0.1 * update(41 + i)[n] for n, a in base.items()} for i in range(3)]
    hostile = {n: -1.0 * a for n, a in base.items()}  # as long as an honest update: only its direction gives it away
    updates = [*honest, hostile]
    result = state.finish_round(round_replies(FOUR, updates, agreement))
    assert [a.sender for a in result.accepted] == [m.public_key_hex for m in MEMBERS]
    (rejection,) = result.rejected
    assert (rejection.sender, rejection.reason) == (OUTSIDER.public_key_hex, c.OUTLIER)
    assert "norm" not in rejection.detail and "cosine with the median of the others -" in rejection.detail
    np.testing.assert_allclose(result.global_arrays["lora.A"], sum(h["lora.A"] for h in honest) / 3, rtol=1e-5)
    (manifest,) = verify_chain(state.chain, agreement, final_sha256=arrays_sha256(result.global_arrays))
    assert [r["reason"] for r in manifest.rejections] == [c.OUTLIER] and len(manifest.contributions) == 3


def test_with_three_updates_the_screen_checks_norms_only() -> None:
    agreement = make_agreement(screen_outliers=True)
    base = update(40)
    updates = [base, {n: 1.1 * a for n, a in base.items()}, {n: -1.0 * a for n, a in base.items()}]
    result = _state(agreement).finish_round(round_replies(MEMBERS, updates, agreement))
    assert len(result.accepted) == 3 and not result.rejected
    updates[2] = {n: 10.0 * a for n, a in base.items()}
    result = _state(agreement).finish_round(round_replies(MEMBERS, updates, agreement))
    assert [(x.sender, x.reason) for x in result.rejected] == [(MEMBERS[2].public_key_hex, c.OUTLIER)]


def test_outlier_screen_off_aggregates_the_same_updates() -> None:
    agreement = four_members()
    base = update(40)
    updates = [base, {n: 1.1 * a for n, a in base.items()}, base, {n: -10.0 * a for n, a in base.items()}]
    result = _state(agreement).finish_round(round_replies(FOUR, updates, agreement))
    assert len(result.accepted) == 4 and not result.rejected


def test_the_updates_krum_leaves_out_are_on_the_record() -> None:
    agreement = four_members(strategy="krum", n_byzantine=1)  # Krum (f = 1) needs K >= 2f + 3 = 4 to drop one
    base = update(60)
    updates = [base, {n: 1.1 * a for n, a in base.items()}, {n: 0.9 * a for n, a in base.items()},
               {n: a + 5.0 for n, a in base.items()}]
    state = _state(agreement)
    result = state.finish_round(round_replies(FOUR, updates, agreement))
    assert [x.sender for x in result.accepted] == [m.public_key_hex for m in MEMBERS]
    assert [(x.sender, x.reason) for x in result.rejected] == [(OUTSIDER.public_key_hex, c.NOT_SELECTED)]
    assert result.valid == 4
    np.testing.assert_allclose(result.global_arrays["lora.A"], base["lora.A"], rtol=1e-5)
    (manifest,) = verify_chain(state.chain, agreement, final_sha256=arrays_sha256(result.global_arrays))
    assert "not among the 3 krum kept" in manifest.rejections[0]["detail"]


def test_a_screen_that_leaves_nothing_aborts_the_round() -> None:
    agreement = four_members(screen_outliers=True, outlier_min_cosine=0.999)
    state = _state(agreement)
    updates = [update(50), update(51), update(52), update(53)]  # unrelated directions: none within 0.999
    with pytest.raises(BelowQuorum, match="every one of the 4 updates is an outlier"):
        state.finish_round(round_replies(FOUR, updates, agreement))
    assert state.round == 0 and not state.chain


def _two_round_chain(agreement: Agreement) -> tuple[list[str], str]:
    state = _state(agreement)
    for r in (1, 2):
        us = [update(20 + r), update(30 + r)]
        state.finish_round([(signed(m, u, agreement, round=r), u) for m, u in zip(MEMBERS, us, strict=False)])
    return state.chain, arrays_sha256(state.global_arrays)


def _edit(env_json: str, fn) -> str:
    d = json.loads(env_json)
    payload = json.loads(Envelope.from_json(env_json).payload)
    fn(payload)
    from protocol.canonical import canonical_json
    body = canonical_json(payload)
    import base64
    d["payload"] = base64.b64encode(body).decode()
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def test_chain_verifies_and_each_tampering_is_named(agreement: Agreement) -> None:
    chain, final = _two_round_chain(agreement)
    assert len(verify_chain(chain, agreement, final_sha256=final)) == 2
    cases = {
        "manifest 2 of 2": [chain[0], _edit(chain[1], lambda p: p.update(aggregate_sha256="00" * 32))],
        "already accepted": [chain[0], chain[0]],  # a manifest repeated is a replay
        "expected round 1": [chain[1]],
        "weights were changed": chain,
    }
    for needle, bad in cases.items():
        with pytest.raises(ChainBroken, match=needle):
            verify_chain(bad, agreement, final_sha256="11" * 32 if needle == "weights were changed" else final)
    forged = make_agreement(coordinator=OUTSIDER.public_key_hex)
    with pytest.raises(ChainBroken, match="manifest 1 of 2"):
        verify_chain(chain, forged)  # another coordinator key: federation id and signature both differ


def test_chain_with_a_forged_contribution_is_rejected(agreement: Agreement) -> None:
    chain, final = _two_round_chain(agreement)

    def swap(p: dict) -> None:
        p["contributions"][0]["update_sha256"] = "22" * 32
    # Re-signing the manifest with the coordinator key does not help: the member's claim disagrees.
    from federation.manifest import RoundManifest, sign_manifest
    payload = json.loads(Envelope.from_json(chain[0]).payload)
    swap(payload)
    resigned = sign_manifest(COORD, RoundManifest.from_dict(payload))
    with pytest.raises(ChainBroken, match="does not match its signed claim"):
        verify_chain([resigned], agreement)


def test_agreement_signature_and_identity(agreement: Agreement) -> None:
    env = agreement.sign(COORD)
    assert verify_agreement(env.to_bytes()) == agreement
    with pytest.raises(FederationError, match="coordinator"):
        agreement.sign(MEMBERS[0])
    tampered = _edit(env.to_json(), lambda p: p.update(rounds=9)).encode()
    with pytest.raises(FederationError):
        verify_agreement(tampered)
    assert make_agreement(rounds=4).federation_id != agreement.federation_id


class _FakeParticipant:
    """Moves every shared array by +1 (update norm sqrt(D)); no torch involved."""

    def __init__(self, agreement: Agreement, identity: Identity) -> None:
        self.agreement, self.identity = agreement, identity

    def train(self, global_arrays, round):  # type: ignore[no-untyped-def]
        return {n: a + 1.0 for n, a in global_arrays.items()}, 7, {"train-loss": 0.5}

    def finalize(self, global_arrays, chain):  # type: ignore[no-untyped-def]
        return "x"


def test_client_side_dp_clips_and_noises_and_stays_verifiable() -> None:
    from federation.apps import contribute

    a = make_agreement(dp_clip_norm=0.5, dp_noise_multiplier=0.0)
    update, envelope, metrics = contribute(_FakeParticipant(a, MEMBERS[0]), a.federation_id, 1, GLOBAL)
    norm = float(np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update.values())))
    assert abs(norm - 0.5) < 1e-5 and metrics["num-examples"] == 7
    assert isinstance(check(envelope, update, a), c.Accepted)
    noisy = make_agreement(dp_clip_norm=0.5, dp_noise_multiplier=1.0)
    u1, _, _ = contribute(_FakeParticipant(noisy, MEMBERS[0]), noisy.federation_id, 1, GLOBAL)
    u2, _, _ = contribute(_FakeParticipant(noisy, MEMBERS[0]), noisy.federation_id, 1, GLOBAL)
    assert not np.allclose(u1["lora.A"], u2["lora.A"])  # fresh noise every round


def test_a_member_refuses_another_federation() -> None:
    from federation.apps import contribute

    a = make_agreement()
    with pytest.raises(FederationError, match="re-join"):
        contribute(_FakeParticipant(a, MEMBERS[0]), "00" * 32, 1, GLOBAL)


def test_mean_pool_init_setting_keeps_older_agreements_ids() -> None:
    """Agreements written before mean_pool_init existed have no such key: they read as off and keep their id."""
    legacy = make_agreement()
    assert "mean_pool_init" not in legacy.to_dict() and legacy.mean_pool_init is False
    on = make_agreement(mean_pool_init=True)
    assert on.to_dict()["mean_pool_init"] is True and on.federation_id != legacy.federation_id
    assert Agreement.from_dict(json.loads(json.dumps(on.to_dict()))) == on
    assert Agreement.from_dict(json.loads(json.dumps(legacy.to_dict()))).federation_id == legacy.federation_id
    with pytest.raises(FederationError, match="mean_pool_init"):
        make_agreement(mean_pool_init="yes")


def test_outlier_screen_settings_keep_older_agreements_ids() -> None:
    """Agreements made before the screen existed read as screen off and keep their id; any change shows."""
    legacy = make_agreement()
    assert not {"screen_outliers", "outlier_norm_ratio", "outlier_min_cosine"} & set(legacy.to_dict())
    on = make_agreement(screen_outliers=True)
    assert on.to_dict()["screen_outliers"] is True and on.to_dict()["outlier_norm_ratio"] == 3.0
    ids = {a.federation_id for a in (legacy, on, make_agreement(screen_outliers=True, outlier_min_cosine=-1.0))}
    assert len(ids) == 3
    assert Agreement.from_dict(on.to_dict()) == on and Agreement.from_dict(legacy.to_dict()) == legacy
    with pytest.raises(FederationError, match="screen_outliers = 'yes': must be true or false"):
        make_agreement(screen_outliers="yes")


def test_lora_targets_setting_keeps_older_agreements_ids() -> None:
    """Query/value adapters were the only kind before lora_targets: such agreements keep their id."""
    legacy = make_agreement()
    assert "lora_targets" not in legacy.to_dict() and legacy.lora_targets == "attention"
    wide = make_agreement(lora_targets="all-linear")
    assert wide.to_dict()["lora_targets"] == "all-linear" and wide.federation_id != legacy.federation_id
    assert Agreement.from_dict(json.loads(json.dumps(wide.to_dict()))) == wide
    with pytest.raises(FederationError, match="lora_targets = 'everything': is unknown; use one of attention, all-linear"):
        make_agreement(lora_targets="everything")
