"""The exceptions of `protocol/`: one base class, one family per module, every message says cause and fix.

Callers catch `ProtocolError` for "anything protocol-side went wrong", or a precise subclass when
they act on it (a federation strategy drops a `ReplayedNonce` reply silently but logs a
`BadSignature` one). Errors raised for a bad argument also subclass `ValueError`.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by `protocol/`."""


# --- canonical encoding -----------------------------------------------------------------------


class CanonicalEncodingError(ProtocolError, ValueError):
    """A value cannot be encoded canonically (or bytes are not the canonical encoding of one)."""


# --- identity keys ----------------------------------------------------------------------------


class IdentityError(ProtocolError):
    """Base class of identity-key errors (files, passphrases, public keys)."""


class KeyFileExists(IdentityError):
    """`Identity.save` refused to overwrite an existing key file."""


class KeyFileNotFound(IdentityError):
    """`Identity.load` found no file at the given path."""


class KeyFileTooOpen(IdentityError):
    """The key file can be read or written by group or others."""


class BadPassphrase(IdentityError):
    """Wrong passphrase, a passphrase missing for an encrypted key, or given for an unencrypted one."""


class InvalidKeyFile(IdentityError):
    """The file is not a PEM PKCS8 Ed25519 private key."""


class InvalidPublicKey(IdentityError, ValueError):
    """A public key given as text or bytes is not a 32-byte Ed25519 key."""


# --- signed envelopes -------------------------------------------------------------------------


class EnvelopeError(ProtocolError):
    """Base class of every reason an envelope is rejected."""


class MalformedEnvelope(EnvelopeError, ValueError):
    """The bytes or fields are not a well-formed envelope (bad JSON, missing field, bad encoding...)."""


class UnsupportedVersion(EnvelopeError):
    """The envelope's version is not one this node speaks."""


class PayloadTampered(EnvelopeError):
    """The payload does not hash to the signed `payload_sha256`."""


class BadSignature(EnvelopeError):
    """The signature does not verify: the header was changed, or another key than `sender` signed."""


class WrongSender(EnvelopeError):
    """The envelope is validly signed, but by another sender than the caller expected."""


class UnknownSender(EnvelopeError):
    """The sender is not in the verifier's allowlist."""


class StaleEnvelope(EnvelopeError):
    """The timestamp is too old, or too far in the future, for the verifier's window."""


class ReplayedNonce(EnvelopeError):
    """This sender's nonce was already accepted once inside the replay window."""


class WrongType(EnvelopeError):
    """The envelope's type is not the one the caller expected."""
