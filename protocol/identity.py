"""A node's identity: one Ed25519 key pair that signs everything the node sends.

The private key lives in a PEM PKCS8 file with mode 0600, optionally encrypted with a passphrase
(`BestAvailableEncryption`). Public keys travel as 64 lowercase hex characters; users may also
paste them as base64. The fingerprint people compare out of band is OpenSSH-style:
`SHA256:` + unpadded base64 of SHA-256(raw 32-byte public key).

>>> alice = Identity.from_seed(bytes(32))
>>> alice.public_key_hex
'3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29'
>>> alice.public_key.verify(b"hi", alice.sign(b"hi"))
True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import (
    BadPassphrase,
    IdentityError,
    InvalidKeyFile,
    InvalidPublicKey,
    KeyFileExists,
    KeyFileNotFound,
    KeyFileTooOpen,
)

PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32
SIGNATURE_SIZE = 64
KEY_FILE_MODE = 0o600
MAX_KEY_FILE_BYTES = 64 * 1024
"""A PEM Ed25519 key is a few hundred bytes; anything this large is the wrong file."""

_ENCRYPTED_PEM_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def _fingerprint(raw: bytes) -> str:
    digest = hashlib.sha256(raw).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, repr=False)
class PublicKey:
    """A raw 32-byte Ed25519 public key, the form peers name each other by."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_SIZE:
            got = f"{len(self.raw)} bytes" if isinstance(self.raw, bytes) else type(self.raw).__name__
            raise InvalidPublicKey(
                f"an Ed25519 public key is {PUBLIC_KEY_SIZE} raw bytes, got {got}; "
                "pass the raw key (PublicKey.parse reads hex or base64 text)"
            )

    @classmethod
    def parse(cls, text: str | PublicKey) -> PublicKey:
        """Read a key given as 64 hex characters (either case) or base64 (standard or URL-safe)."""
        if isinstance(text, PublicKey):
            return text
        if not isinstance(text, str):
            raise InvalidPublicKey(f"a public key is given as text, not {type(text).__name__}")
        stripped = text.strip()
        raw: bytes | None = None
        if len(stripped) == 2 * PUBLIC_KEY_SIZE:
            try:
                raw = bytes.fromhex(stripped)
            except ValueError:
                raw = None
        elif len(stripped) in (43, 44):
            padded = stripped + "=" * (-len(stripped) % 4)
            alphabet = b"-_" if ("-" in stripped or "_" in stripped) else b"+/"
            try:
                raw = base64.b64decode(padded, altchars=alphabet, validate=True)
            except (binascii.Error, ValueError):
                raw = None
        if raw is None or len(raw) != PUBLIC_KEY_SIZE:
            shown = stripped if len(stripped) <= 80 else stripped[:77] + "..."
            raise InvalidPublicKey(
                f"{shown!r} is not an Ed25519 public key; give the 64 hex characters "
                "(as `rewardnode identity` prints them) or the 44-character base64 form"
            )
        return cls(raw)

    @property
    def hex(self) -> str:
        """The key as 64 lowercase hex characters (the wire form)."""
        return self.raw.hex()

    @property
    def fingerprint(self) -> str:
        """`SHA256:` + unpadded base64 of SHA-256(raw key), as OpenSSH prints fingerprints."""
        return _fingerprint(self.raw)

    @property
    def short_fingerprint(self) -> str:
        """The first 12 base64 characters of the fingerprint, for logs and tables."""
        return self.fingerprint[: len("SHA256:") + 12]

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature of `data`."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return self.hex

    def __repr__(self) -> str:
        return f"PublicKey({self.hex!r})"


def verify_signature(public_key: PublicKey | bytes | str, data: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `data` by `public_key`.

    `public_key` may be a `PublicKey`, the raw 32 bytes, or text for `PublicKey.parse`; a malformed
    key raises `InvalidPublicKey` (a configuration error), a wrong signature just returns False.
    """
    if isinstance(public_key, str):
        key = PublicKey.parse(public_key)
    elif isinstance(public_key, bytes):
        key = PublicKey(public_key)
    else:
        key = public_key
    return key.verify(data, signature)


@dataclass(frozen=True, eq=False)
class Identity:
    """A node's Ed25519 private key. Equal when the keys are equal; its repr never shows the secret."""

    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise ValueError(
                f"Identity wraps an Ed25519PrivateKey, not a {type(self.private_key).__name__}; "
                "use Identity.generate(), Identity.load(path) or Identity.from_seed(seed)"
            )

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose 32-byte Ed25519 seed is `seed` (the inverse of `private_seed`)."""
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            got = f"{len(seed)} bytes" if isinstance(seed, bytes) else type(seed).__name__
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {got}; pass Identity.private_seed()")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    # --- public half --------------------------------------------------------------------------

    @property
    def public_key(self) -> PublicKey:
        """The public half, as peers see it."""
        return PublicKey(self.public_key_bytes)

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_key_hex(self) -> str:
        """The public key as 64 lowercase hex characters (the `sender` field of envelopes)."""
        return self.public_key_bytes.hex()

    @property
    def fingerprint(self) -> str:
        """`SHA256:` + unpadded base64 of SHA-256(public key), for people to compare out of band."""
        return _fingerprint(self.public_key_bytes)

    @property
    def short_fingerprint(self) -> str:
        """The first 12 base64 characters of the fingerprint, for logs and tables."""
        return self.public_key.short_fingerprint

    # --- secret half --------------------------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `data` (deterministic: same key and data, same bytes)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"sign takes bytes, not {type(data).__name__}; encode it canonically first")
        return self.private_key.sign(bytes(data))

    def private_seed(self) -> bytes:
        """The raw 32-byte private seed. SENSITIVE: whoever holds it is this node.

        Exists so the libp2p host can derive its peer ID from the same key; never log, send or
        store it anywhere but the 0600 key file.
        """
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    # --- files --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], passphrase: bytes | None = None) -> None:
        """Write the key as PEM PKCS8 to a new file with mode 0600, encrypted when `passphrase` is given.

        The file appears atomically (written to a temporary file, then hard-linked into place), and
        an existing file is never overwritten. Missing parent folders are created with mode 0700.
        """
        target = Path(path)
        if passphrase is not None and (not isinstance(passphrase, bytes) or not passphrase):
            raise BadPassphrase(
                "the passphrase must be non-empty bytes; pass passphrase=None to store the key unencrypted"
            )
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        if target.exists() or target.is_symlink():
            raise KeyFileExists(_exists_message(target))
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise IdentityError(
                f"could not create the folder {target.parent} for the identity key: {exc.strerror or exc}; "
                "choose a path in a writable folder"
            ) from None
        try:
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
            _write_new_file(tmp, pem)
            try:
                _link_or_create(tmp, target, pem)
            finally:
                tmp.unlink(missing_ok=True)
        except FileExistsError:
            raise KeyFileExists(_exists_message(target)) from None
        except OSError as exc:
            raise IdentityError(
                f"could not write the identity key to {target}: {exc.strerror or exc}; "
                "choose a path in a writable folder"
            ) from None
        _fsync_dir(target.parent)

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: bytes | None = None) -> Identity:
        """Read a key written by `save`; errors say what is wrong with the file and how to fix it."""
        source = Path(path)
        try:
            info = source.stat()
        except FileNotFoundError:
            raise KeyFileNotFound(
                f"no identity key at {source}; check the path (node.toml [identity] key_file) "
                "or create one with Identity.generate().save(path)"
            ) from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidKeyFile(f"{source} is not a regular file; point key_file at the PEM key file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise KeyFileTooOpen(
                f"{source} has mode {stat.S_IMODE(info.st_mode):04o}, so group or others can access the "
                f"private key; run `chmod 600 {source}` (and consider the key compromised if others could read it)"
            )
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise InvalidKeyFile(
                f"{source} is {info.st_size} bytes, too large for an Ed25519 PEM key; point key_file at the key file"
            )
        data = source.read_bytes()
        encrypted = _ENCRYPTED_PEM_HEADER in data
        if encrypted and passphrase is None:
            raise BadPassphrase(f"{source} is encrypted; supply its passphrase")
        if not encrypted and passphrase is not None:
            raise BadPassphrase(
                f"{source} is not encrypted but a passphrase was given; drop the passphrase, "
                "or re-save the key with Identity.save(path, passphrase) to encrypt it"
            )
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except (ValueError, TypeError) as exc:
            if encrypted:
                raise BadPassphrase(
                    f"could not decrypt {source}: wrong passphrase (or a corrupted file); try again"
                ) from None
            raise InvalidKeyFile(
                f"{source} is not a PEM PKCS8 private key ({exc}); point key_file at the file "
                "Identity.save wrote"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidKeyFile(
                f"{source} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key; rewardnode "
                "identities are Ed25519: generate one with Identity.generate().save(path)"
            )
        return cls(key)

    # --- dunder -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return self.public_key_bytes == other.public_key_bytes

    def __hash__(self) -> int:
        return hash(self.public_key_bytes)

    def __repr__(self) -> str:
        return f"Identity(fingerprint={self.fingerprint!r})"


def _exists_message(target: Path) -> str:
    return (
        f"{target} already exists and may be a key you need, so it was not overwritten; "
        "move it away or choose another path"
    )


def _link_or_create(tmp: Path, target: Path, data: bytes) -> None:
    """Publish `tmp` as `target` atomically without replacing an existing file."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        # No hard links on this filesystem: create the target exclusively instead.
        _write_new_file(target, data)


def _write_new_file(path: Path, data: bytes) -> None:
    """Create `path` exclusively with mode 0600, write `data`, fsync; remove it if writing fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), KEY_FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
