"""The composition root: one node's config, store and identity, opened on demand."""

from __future__ import annotations

import getpass
import os
import sys
from functools import cached_property
from pathlib import Path

from node.config import PASSPHRASE_ENV, NodeConfig, load_config, resolve_home
from node.errors import NodeError
from protocol.errors import InvalidKeyFile, KeyFileNotFound
from protocol.identity import Identity
from storage.store import Store


def read_passphrase(*, confirm: bool) -> bytes:
    """The key passphrase from `$REWARDNODE_PASSPHRASE`, else asked on the terminal."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if env is not None:
        raise NodeError(f"${PASSPHRASE_ENV} is set but empty; set it to the key's passphrase, or unset it to be "
                        "asked on the terminal")
    if not sys.stdin.isatty():
        raise NodeError(f"the identity key is encrypted and no terminal is attached; set ${PASSPHRASE_ENV}")
    first = getpass.getpass("identity key passphrase: ")
    if confirm and getpass.getpass("repeat passphrase: ") != first:
        raise NodeError("the two passphrases differ; run the command again")
    if not first:
        raise NodeError(f"empty passphrase; type one, or set ${PASSPHRASE_ENV}")
    return first.encode()


class Node:
    """One organization's node, rooted at its home folder."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config

    @classmethod
    def open(cls, home: str | Path | None, *, db: str | None = None) -> Node:
        return cls(load_config(resolve_home(home), db_override=db))

    @cached_property
    def store(self) -> Store:
        return Store.open(self.config.storage.url)

    @cached_property
    def identity(self) -> Identity:
        passphrase = read_passphrase(confirm=False) if self.config.identity.encrypted else None
        key_file = self.config.identity.key_file
        try:
            return Identity.load(key_file, passphrase)
        except KeyFileNotFound:
            raise NodeError(
                f"no identity key at {key_file} (node.toml [identity] key_file); restore the file from your backup "
                "or fix the path. The key is this node's identity: a new one (`rewardnode init` in a new home) is "
                "a different node to its peers and federations") from None
        except InvalidKeyFile as exc:
            problem = str(exc).split("; ")[0]  # the library's fix names Python calls; give the CLI's
            raise NodeError(f"{problem}; the key file is the `identity.key` that `rewardnode init` wrote: restore it "
                            "from your backup or fix [identity] key_file in node.toml") from None

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
