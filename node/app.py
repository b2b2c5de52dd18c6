"""The composition root: one node's config, store and identity, opened on demand."""

from __future__ import annotations

import getpass
import os
import sys
from functools import cached_property
from pathlib import Path

from node.config import PASSPHRASE_ENV, NodeConfig, load_config, resolve_home
from node.errors import NodeError
from protocol.identity import Identity
from storage.store import Store


def read_passphrase(*, confirm: bool) -> bytes:
    """The key passphrase from `$REWARDNODE_PASSPHRASE`, else asked on the terminal."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
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
        return Identity.load(self.config.identity.key_file, passphrase)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
