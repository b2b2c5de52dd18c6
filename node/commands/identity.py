"""`rewardnode init` and `rewardnode identity`."""

from __future__ import annotations

import argparse
import json
import os

from node.app import Node, read_passphrase
from node.config import (
    CONFIG_FILE,
    DEFAULT_DB_FILE,
    DEFAULT_KEY_FILE,
    render_config,
    resolve_db_url,
    resolve_home,
    validate_name,
)
from node.errors import NodeError, UsageError

COMMANDS = {
    "init": "create a node: node.toml, the database and an Ed25519 identity key",
    "identity": "show this node's public key and fingerprint",
}


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "init":
        parser.add_argument("--name", required=True, help="node name shown to peers, e.g. org-a")
        parser.add_argument("--encrypt-key", action="store_true",
                            help="encrypt the identity key with a passphrase ($REWARDNODE_PASSPHRASE or asked)")
    elif name == "identity":
        parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_init(args: argparse.Namespace) -> int:
    from protocol.identity import Identity
    from storage.store import Store

    name = validate_name(args.name)
    if args.db is not None and not args.db.strip():
        raise UsageError("--db is empty; give a database URL (sqlite:///PATH or postgresql+psycopg://...), or "
                         "leave --db out for a SQLite store in the node home")
    home = resolve_home(args.home)
    if home.exists() and not home.is_dir():
        raise NodeError(f"{home} is a file, not a folder; pick a new or empty folder for --home")
    if (home / CONFIG_FILE).exists():
        raise NodeError(f"{home} already holds a node ({CONFIG_FILE} exists); pick another --home, or use the existing node")
    if (home / DEFAULT_KEY_FILE).exists():
        raise NodeError(f"{home / DEFAULT_KEY_FILE} exists without a {CONFIG_FILE}; move it away (it may be a key you need) and retry")
    # The passphrase first: a missing one leaves nothing behind.
    passphrase = read_passphrase(confirm=True) if args.encrypt_key else None
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    db_url = resolve_db_url(args.db or f"sqlite:///{DEFAULT_DB_FILE}", home)  # as later commands open it
    # Open (create and migrate) the database before the key: a bad --db URL leaves no key behind.
    Store.open(db_url).close()
    identity = Identity.generate()
    identity.save(home / DEFAULT_KEY_FILE, passphrase)
    config_text = render_config(name, args.db or "sqlite:///store.db", encrypted=passphrase is not None)
    fd = os.open(home / CONFIG_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(config_text)
    print(f"initialized node {name!r} in {home}")
    print(f"  identity  {identity.fingerprint}")
    print(f"  database  {_redact(db_url)}")
    return 0


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def run_identity(args: argparse.Namespace) -> int:
    with Node.open(args.home, db=args.db) as node:
        identity = node.identity  # an encrypted key asks for its passphrase here
        info = {
            "name": node.config.name,
            "public_key": identity.public_key_hex,
            "fingerprint": identity.fingerprint,
            "key_file": str(node.config.identity.key_file),
            "encrypted": node.config.identity.encrypted,
            "home": str(node.config.home),
        }
        info.update(_p2p_info(node))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:12s} {value}")
    return 0


def _p2p_info(node: Node) -> dict[str, object]:
    """The libp2p peer ID (from the same Ed25519 key) and the addresses peers dial."""
    try:
        from protocol.p2p.host import full_addrs, peer_id_of
    except ImportError:  # py-libp2p not installed: keep the rest of the output
        return {}
    from node.p2p import P2PConfig

    peer_id = peer_id_of(node.identity)
    config = P2PConfig.from_table(node.config.table("p2p"))
    return {"peer_id": peer_id, "addresses": full_addrs(config.announce or config.listen, peer_id)}
