"""Identity keys: files are private and never clobbered, signatures verify only for the right key and data."""

from __future__ import annotations

import base64
import doctest
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.errors import (
    BadPassphrase,
    IdentityError,
    InvalidKeyFile,
    InvalidPublicKey,
    KeyFileExists,
    KeyFileNotFound,
    KeyFileTooOpen,
    ProtocolError,
)
from protocol.identity import Identity, PublicKey, verify_signature

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")

# RFC 8032 section 7.1, TEST 1 (empty message).
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
    "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


@pytest.fixture
def alice() -> Identity:
    return Identity.from_seed(bytes([1]) * 32)


@pytest.fixture
def bob() -> Identity:
    return Identity.from_seed(bytes([2]) * 32)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- keys and signatures ------------------------------------------------------------------------


def test_rfc8032_vector() -> None:
    identity = Identity.from_seed(RFC_SEED)
    assert identity.public_key_hex == RFC_PUBLIC
    assert identity.public_key_bytes == bytes.fromhex(RFC_PUBLIC)
    assert identity.sign(b"") == RFC_SIGNATURE
    assert identity.private_seed() == RFC_SEED
    assert verify_signature(RFC_PUBLIC, b"", RFC_SIGNATURE)


def test_sign_verify_round_trip(alice: Identity, bob: Identity) -> None:
    sig = alice.sign(b"hello")
    assert len(sig) == 64
    assert alice.public_key.verify(b"hello", sig)
    assert verify_signature(alice.public_key_bytes, b"hello", sig)
    assert not verify_signature(alice.public_key, b"hellO", sig)
    assert not verify_signature(bob.public_key, b"hello", sig)
    assert not verify_signature(alice.public_key, b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify_signature(alice.public_key, b"hello", sig[:63])
    assert not verify_signature(alice.public_key, b"hello", b"")


def test_generate_gives_distinct_keys_and_seed_round_trips() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a != b
    assert Identity.from_seed(a.private_seed()) == a
    assert len(a.private_seed()) == 32 and len(a.public_key_bytes) == 32
    assert hash(Identity.from_seed(a.private_seed())) == hash(a)


def test_fingerprint_is_openssh_style(alice: Identity) -> None:
    digest = hashlib.sha256(alice.public_key_bytes).digest()
    expected = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    assert alice.fingerprint == expected == alice.public_key.fingerprint
    assert len(alice.fingerprint) == len("SHA256:") + 43
    assert alice.short_fingerprint == expected[: len("SHA256:") + 12]


def test_repr_never_shows_the_secret(alice: Identity) -> None:
    text = repr(alice) + str(alice)
    assert alice.private_seed().hex() not in text
    assert alice.fingerprint in repr(alice)


def test_bad_constructor_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Identity.from_seed(b"short")
    with pytest.raises(ValueError, match="Ed25519PrivateKey"):
        Identity("not a key")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bytes"):
        Identity.generate().sign("text")  # type: ignore[arg-type]


# --- public keys given by users -----------------------------------------------------------------


def test_public_key_parses_hex_and_base64(alice: Identity) -> None:
    raw = alice.public_key_bytes
    forms = [
        raw.hex(),
        raw.hex().upper(),
        f"  {raw.hex()}\n",
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
    ]
    for text in forms:
        assert PublicKey.parse(text) == alice.public_key, text
    key = alice.public_key
    assert PublicKey.parse(key) is key
    assert repr(key) == f"PublicKey('{alice.public_key_hex}')"
    assert str(alice.public_key) == alice.public_key_hex == alice.public_key.hex


@pytest.mark.parametrize(
    "text",
    ["", "zz" * 32, "ab" * 31, "ab" * 33, "A" * 44, base64.b64encode(bytes(31)).decode(), "not a key at all"],
)
def test_public_key_parse_errors_say_what_to_give(text: str) -> None:
    with pytest.raises(InvalidPublicKey, match="64 hex characters"):
        PublicKey.parse(text)


def test_public_key_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="32 raw bytes"):
        PublicKey(b"\x00" * 31)
    with pytest.raises(InvalidPublicKey):
        verify_signature("nope", b"", bytes(64))


# --- saving -------------------------------------------------------------------------------------


@posix_only
def test_save_load_round_trip_unencrypted(tmp_path: Path, alice: Identity, umask_022: None) -> None:
    path = tmp_path / "identity.pem"
    alice.save(path)
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Identity.load(path) == alice
    assert Identity.load(str(path)).private_seed() == alice.private_seed()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.pem"]  # no temporary left behind


@posix_only
def test_save_load_round_trip_with_passphrase(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "identity.pem"
    alice.save(path, b"correct horse")
    assert _mode(path) == 0o600
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert alice.private_seed() not in data
    assert Identity.load(path, b"correct horse") == alice


@posix_only
def test_save_is_0600_even_with_a_permissive_umask(tmp_path: Path, alice: Identity) -> None:
    old = os.umask(0)
    try:
        alice.save(tmp_path / "k.pem")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k.pem") == 0o600


def test_save_refuses_to_overwrite(tmp_path: Path, alice: Identity, bob: Identity) -> None:
    path = tmp_path / "identity.pem"
    alice.save(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileExists, match="move it away"):
        bob.save(path)
    assert path.read_bytes() == before
    assert Identity.load(path) == alice


def test_save_refuses_a_dangling_symlink(tmp_path: Path, alice: Identity) -> None:
    link = tmp_path / "identity.pem"
    link.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(KeyFileExists):
        alice.save(link)
    assert not (tmp_path / "elsewhere.pem").exists()


@posix_only
def test_save_creates_private_parent_folders(tmp_path: Path, alice: Identity, umask_022: None) -> None:
    path = tmp_path / "a" / "b" / "identity.pem"
    alice.save(path)
    assert Identity.load(path) == alice
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_save_rejects_an_empty_passphrase(tmp_path: Path, alice: Identity) -> None:
    with pytest.raises(BadPassphrase, match="non-empty"):
        alice.save(tmp_path / "k.pem", b"")
    assert not (tmp_path / "k.pem").exists()


@posix_only
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_save_into_a_read_only_folder_says_so(tmp_path: Path, alice: Identity) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(IdentityError, match="writable folder"):
        alice.save(folder / "k.pem")


def test_save_under_a_file_posing_as_a_folder_says_so(tmp_path: Path, alice: Identity) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(IdentityError, match="writable folder") as excinfo:
        alice.save(tmp_path / "file" / "k.pem")
    assert type(excinfo.value) is IdentityError


# --- loading ------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileNotFound, match="no identity key"):
        Identity.load(tmp_path / "nope.pem")


def test_wrong_passphrase(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "k.pem"
    alice.save(path, b"right")
    with pytest.raises(BadPassphrase, match="wrong passphrase"):
        Identity.load(path, b"wrong")


def test_missing_passphrase(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "k.pem"
    alice.save(path, b"right")
    with pytest.raises(BadPassphrase, match="supply its passphrase"):
        Identity.load(path)


def test_passphrase_for_an_unencrypted_key(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "k.pem"
    alice.save(path)
    with pytest.raises(BadPassphrase, match="not encrypted"):
        Identity.load(path, b"something")


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_too_open_permissions(tmp_path: Path, alice: Identity, mode: int) -> None:
    path = tmp_path / "k.pem"
    alice.save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileTooOpen) as excinfo:
        Identity.load(path)
    assert f"chmod 600 {path}" in str(excinfo.value)
    assert f"{mode:04o}" in str(excinfo.value)
    path.chmod(0o600)
    assert Identity.load(path) == alice


@posix_only
def test_owner_read_only_is_fine(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "k.pem"
    alice.save(path)
    path.chmod(0o400)
    assert Identity.load(path) == alice


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def test_load_a_non_ed25519_key(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(path, pem)
    with pytest.raises(InvalidKeyFile, match="not an Ed25519 key"):
        Identity.load(path)


def test_load_garbage_and_folders(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    _write_private(path, b"hello, not a key\n")
    with pytest.raises(InvalidKeyFile, match="not a PEM PKCS8 private key"):
        Identity.load(path)
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(InvalidKeyFile, match="not a regular file"):
        Identity.load(folder)


def test_identity_errors_are_protocol_errors(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError):
        Identity.load(tmp_path / "nope.pem")


def test_docstring_examples_hold() -> None:
    import protocol.identity

    assert doctest.testmod(protocol.identity).failed == 0
