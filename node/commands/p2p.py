"""Peer-to-peer commands: peers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.p2p import PeerBook

COMMANDS = {
    "peers": "list known peers (peers.json), add one (`peers add MULTIADDR`), or --probe them",
}


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "peers":
        parser.add_argument("action", nargs="?", choices=["list", "add"], default="list",
                            help="list (default) or add a peer")
        parser.add_argument("multiaddr", nargs="?", help="for add: /ip4/HOST/tcp/PORT/p2p/PEER_ID")
        parser.add_argument("--name", help="for add: a label for the peer")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument("--probe", action="store_true",
                            help="start the p2p host briefly and report which peers answer")


def _not_saved(book: PeerBook, exc: OSError) -> str:
    return (f"cannot write {book.path} ({exc.strerror or exc}): the node home {book.path.parent} is not writable; "
            "nothing was changed")


def run_peers(args: argparse.Namespace) -> int:
    from node.app import Node
    from node.errors import NodeError, UsageError
    from node.p2p import P2PConfig, PeerBook

    with Node.open(args.home, db=args.db) as node:
        book = PeerBook.load(node.config.home)
        if args.action == "add":
            if not args.multiaddr:
                raise UsageError("peers add needs the peer's address: rewardnode peers add /ip4/HOST/tcp/PORT/p2p/ID")
            try:
                added = book.add(args.multiaddr, args.name)
            except OSError as exc:  # peers.json is replaced atomically: the old file is intact
                raise NodeError(f"{_not_saved(book, exc)}; make it writable (or free disk space) and add the peer "
                                "again") from None
            print(("added " if added else "already known: ") + args.multiaddr)
            return 0
        if args.multiaddr:
            raise UsageError("a multiaddr is only taken by `peers add`")
        config = P2PConfig.from_table(node.config.table("p2p"))
        rows = [{"source": "peers.json", **p} for p in book.peers]  # "discovered" ones say so
        rows += [{"addr": a, "peer_id": a.rsplit("/", 1)[-1], "name": None, "source": "node.toml"}
                 for a in config.bootstrap]
        if args.probe:
            import logging

            from protocol.p2p.host import HostConfig, P2PHost

            with P2PHost(node.identity, HostConfig(listen=("/ip4/0.0.0.0/tcp/0",), enable_dht=False)) as host:
                # after start: importing libp2p configures its loggers; we print one line per peer instead
                logging.getLogger("libp2p").setLevel(logging.CRITICAL)
                for row in rows:
                    try:
                        host.connect(row["addr"], timeout=5)
                        row["reachable"] = True
                    except Exception as exc:  # noqa: BLE001 - reported per peer
                        row["reachable"], row["error"] = False, str(exc)
                up = [row for row in rows if row["reachable"] and row["addr"] in book.addrs]
                for row in up:
                    row["last_seen_ms"] = time.time_ns() // 1_000_000
                try:
                    if up:  # re-reads peers.json under its lock: a running node may be writing it too
                        book.mark_seen([row["addr"] for row in up])
                except (OSError, NodeError) as exc:  # the probe worked: report it, say what was not recorded
                    reason = _not_saved(book, exc) if isinstance(exc, OSError) else str(exc)
                    print(f"warning: {reason} (last-seen times not recorded)", file=sys.stderr)
    if args.json:
        print(json.dumps({"peers": rows}, indent=2))
    elif not rows:
        print("no known peers; add one with: rewardnode peers add /ip4/HOST/tcp/PORT/p2p/PEER_ID")
    else:
        for row in rows:
            state = "" if "reachable" not in row else ("  up" if row["reachable"] else "  DOWN")
            seen = row.get("last_seen_ms")
            seen_txt = time.strftime("%Y-%m-%d %H:%M", time.localtime(seen / 1000)) if seen else "never seen"
            verified = "verified" if row.get("verified") else "unverified"
            print(f"{row.get('name') or '-':16s} {row['addr']}  {verified}, {seen_txt}{state}")
    return 0
