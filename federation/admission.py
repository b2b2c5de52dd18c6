"""SuperNode admission: which Flower SuperNodes may connect to a federation's SuperLink.

Flower 1.41 authenticates SuperNodes with an elliptic-curve key (NIST P-384 here) that the SuperLink
must have registered beforehand (`flower-superlink --enable-supernode-auth`, `flwr supernode
register`). rewardnode's members are known by their Ed25519 identity keys, so each member binds
its SuperNode key to its identity: at join time it makes a P-384 key for the federation and signs
a **SuperNode key record** (a protocol envelope of type `SUPERNODE_KEY_TYPE` whose payload names the
federation and the SSH-encoded public key). The coordinator admits a record only if its signer is on
the agreement's member list and it names this federation; at each run it registers the admitted
keys with the SuperLink, so only members' SuperNodes can pull work or push replies. Contributions
stay signed with the Ed25519 identity key on top of this (federation.contribution): transport
admission keeps strangers out, signatures say who sent what.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from federation.agreement import Agreement, replace_file
from federation.errors import FederationError
from protocol.canonical import canonical_json, parse_json
from protocol.envelope import Envelope, Verifier, sign_envelope
from protocol.errors import EnvelopeError
from protocol.identity import Identity

SUPERNODE_KEY_TYPE = "rewardnode/federation/supernode-key"
SUPERNODE_KEY_MAX_AGE_S = 10**9 - 1
"""A key record is long-lived (re-checked for signature and membership at every run, not freshness)."""
KEY_FEDERATION = "federation_id"
KEY_PUBLIC = "supernode_public_key"


@dataclass(frozen=True)
class SupernodeKey:
    """A member's verified SuperNode key record."""

    member: str
    """The member's Ed25519 public key (hex) that signed the record."""
    federation_id: str
    public_key_ssh: bytes
    """The SuperNode's P-384 public key, OpenSSH encoding (what `flwr supernode register` reads)."""


def ensure_supernode_key(private_path: Path) -> bytes:
    """Load the P-384 SuperNode key at `private_path`, making it (mode 0600) if absent; returns the public key
    in OpenSSH encoding."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if private_path.is_file():
        key = serialization.load_ssh_private_key(private_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FederationError(f"{private_path} is not an elliptic-curve key; move it away and join again")
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        # whole or absent after a crash: written to a 0600 temporary file, then renamed
        replace_file(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                     serialization.NoEncryption()))
    public: bytes = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public


def sign_supernode_key(identity: Identity, federation_id: str, public_key_ssh: bytes) -> Envelope:
    """The member's record binding `public_key_ssh` to its identity for federation `federation_id`."""
    _check_public_key(public_key_ssh)
    payload = canonical_json({KEY_FEDERATION: federation_id, KEY_PUBLIC: public_key_ssh.decode("ascii")})
    return sign_envelope(identity, SUPERNODE_KEY_TYPE, payload)


def verify_supernode_key(data: bytes, agreement: Agreement) -> SupernodeKey:
    """Check a SuperNode key record: signed by one of `agreement`'s members, for this federation."""
    try:
        env = Envelope.from_bytes(data)
        Verifier(set(agreement.members), max_age_s=SUPERNODE_KEY_MAX_AGE_S,
                 max_skew_s=SUPERNODE_KEY_MAX_AGE_S).verify(env, expected_type=SUPERNODE_KEY_TYPE)
        values = parse_json(env.payload)
        if not isinstance(values, dict) or set(values) != {KEY_FEDERATION, KEY_PUBLIC}:
            raise ValueError(f"the record must hold exactly {KEY_FEDERATION!r} and {KEY_PUBLIC!r}")
        federation_id, public = str(values[KEY_FEDERATION]), str(values[KEY_PUBLIC]).encode("ascii")
    except (EnvelopeError, ValueError, TypeError, UnicodeEncodeError) as exc:
        raise FederationError(f"the SuperNode key record does not verify: {exc}") from None
    if federation_id != agreement.federation_id:
        raise FederationError(f"the SuperNode key record is for federation {federation_id[:16]}..., not "
                              f"{agreement.name!r} ({agreement.federation_id[:16]}...); the member joined "
                              "another version of the agreement: ask it to join this one")
    _check_public_key(public)
    return SupernodeKey(env.sender, federation_id, public)


def _check_public_key(public_key_ssh: bytes) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(public_key_ssh)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise FederationError(f"the SuperNode public key is not an OpenSSH public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in ("secp256r1", "secp384r1",
                                                                                  "secp521r1"):
        raise FederationError("the SuperNode key must be a NIST P-256/384/521 elliptic-curve key (Flower's "
                              "SuperNode authentication accepts only those)")
