"""Labeling campaigns and labelers: `rewardnode campaign create|invite|list` and `rewardnode token create|list|revoke`.

Tokens are printed once and stored only as their sha256.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from node.app import Node
from node.errors import UsageError
from node.formats.fields import NAME_RULE, name_problem

COMMANDS: dict[str, str] = {
    "campaign": "labeling campaigns: create (pairs from sources), invite a labeler (one-time link), list",
    "token": "HTTP access tokens (admin, labeler, scorer): create (shown once), list, revoke",
}
ROLES = ("admin", "labeler", "scorer")


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    if name == "campaign":
        create = sub.add_parser("create", help="create a campaign over the response pairs of some sources")
        create.add_argument("name", help="campaign name, e.g. helpfulness-v1")
        create.add_argument("--source", action="append", default=[], metavar="S",
                            help="label pairs of this source's prompts (repeatable)")
        create.add_argument("--pairs", metavar="FILE", help="explicit pairs: one 'RESPONSE_ID RESPONSE_ID' per line")
        create.add_argument("--overlap", type=int, default=1, metavar="N", help="labels wanted per pair (default 1)")
        create.add_argument("--guidelines", metavar="FILE", help="guidelines shown on the labeling page (text)")
        invite = sub.add_parser("invite", help="a one-time invite link for a labeler")
        invite.add_argument("name", help="campaign name")
        invite.add_argument("--labeler", required=True, metavar="NAME", help="the labeler's name (their annotator name)")
        invite.add_argument("--days", type=float, default=7.0, help="the invite expires after this many days (7)")
        invite.add_argument("--url", metavar="URL", help="the server's base URL (default: from node.toml [server])")
        lst = sub.add_parser("list", help="campaigns and their progress")
        lst.add_argument("--json", action="store_true", help="print JSON")
    else:
        create = sub.add_parser("create", help="create a token (printed once)")
        create.add_argument("--role", choices=ROLES, required=True)
        create.add_argument("--name", required=True, help="who holds it (a labeler's name labels as that name)")
        lst = sub.add_parser("list", help="every token (never the secret)")
        lst.add_argument("--json", action="store_true", help="print JSON")
        revoke = sub.add_parser("revoke", help="revoke a token by id")
        revoke.add_argument("id", type=int)


def _check_url(url: str) -> None:
    """--url must be an http(s) base URL with a host: the invite link is built on it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise UsageError(f"--url {url!r} is not a valid URL ({e}); give the server's base URL, "
                         "e.g. https://labels.example.org or http://127.0.0.1:8080") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {url!r} is not an http(s) URL with a host; give the server's base URL, "
                         "e.g. https://labels.example.org or http://127.0.0.1:8080")
    if parts.query or parts.fragment:
        raise UsageError(f"--url {url!r} has a ?query or #fragment; give the server's base URL without them")


def _invite_expiry(days: float) -> datetime:
    if not math.isfinite(days) or days <= 0:
        raise UsageError(f"--days {days:g}: an invite must stay valid for more than 0 days (e.g. --days 7)")
    try:
        return datetime.now(UTC) + timedelta(days=days)
    except OverflowError:
        raise UsageError(f"--days {days:g} is too far in the future; give a number of days such as 7 or 30") from None


def _base_url(node: Node, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    server = node.config.table("server")
    host = str(server.get("host", "127.0.0.1"))
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{server.get('port', 8080)}"


def _read_pairs(path: str) -> list[tuple[str, str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}; pass a readable file") from None
    pairs = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        if len(parts) != 2:
            raise UsageError(f"{path}:{i}: expected two response ids separated by a space")
        pairs.append((parts[0], parts[1]))
    return pairs


def run_campaign(args: argparse.Namespace) -> int:
    from node.labeling.service import campaign_name_max, campaign_name_problem, new_secret, sha256_hex

    if args.action == "invite":  # checked before the store is opened: a bad flag changes nothing
        if (problem := name_problem(args.labeler)) is not None:
            raise UsageError(f"--labeler is not a valid annotator name: {problem}; give the labeler's name "
                             f"({NAME_RULE}: it is recorded with their labels)")
        if args.url is not None:
            _check_url(args.url)
        expires = _invite_expiry(args.days)
    with Node.open(args.home, db=args.db) as node:
        store = node.store
        if args.action == "create":
            if (problem := campaign_name_problem(args.name)) is not None:  # labels go to labeling:NAME
                raise UsageError(f"invalid campaign name: {problem}; give a name of 1-{campaign_name_max()} "
                                 "characters without control characters or '/', e.g. helpful-v1")
            if not args.source and not args.pairs:
                raise UsageError("a campaign needs pairs: pass --source NAME (repeatable) and/or --pairs FILE")
            if args.overlap < 1:
                raise UsageError(f"--overlap {args.overlap}: ask for at least 1 label per pair")
            guidelines = None
            if args.guidelines:
                try:
                    guidelines = Path(args.guidelines).read_text(encoding="utf-8")
                except OSError as e:
                    raise UsageError(f"cannot read {args.guidelines}: {e.strerror}; pass a readable text file") from None
            info = store.create_campaign(args.name, sources=args.source,
                                         pairs=_read_pairs(args.pairs) if args.pairs else (),
                                         overlap=args.overlap, guidelines=guidelines)
            print(f"campaign {info.name!r}: {info.pairs:,} pairs, {info.overlap} label(s) each; invite labelers "
                  f"with `rewardnode campaign invite {info.name} --labeler NAME`")
        elif args.action == "invite":
            store.get_campaign(args.name)
            secret = new_secret()
            store.add_token(sha256_hex(secret), kind="invite", role="labeler", name=args.labeler,
                            campaign=args.name, expires_at=expires)
            print(f"invite for {args.labeler} to {args.name} (one use, expires {expires:%Y-%m-%d %H:%M} UTC; "
                  "shown only now):")
            print(f"  {_base_url(node, args.url)}/login#invite={secret}")
        else:
            campaigns = [c for c in store.list_campaigns() if c.pairs]
            if args.json:
                print(json.dumps([{"name": c.name, "overlap": c.overlap, "pairs": c.pairs, "labels": c.labels,
                                   "complete": c.complete, "labelers": c.labelers,
                                   "created_at": c.created_at.isoformat()} for c in campaigns], indent=2))
            elif not campaigns:
                print("no campaigns yet; create one with `rewardnode campaign create NAME --source SOURCE`")
            else:
                for c in campaigns:
                    print(f"{c.name:<24} {c.complete:>7,}/{c.pairs:<7,} pairs at overlap {c.overlap}  "
                          f"{c.labels:,} labels by {c.labelers} labeler(s)")
    return 0


def run_token(args: argparse.Namespace) -> int:
    from node.labeling.service import new_secret, sha256_hex

    if args.action == "create" and (problem := name_problem(args.name)) is not None:
        raise UsageError(f"--name is not a valid name: {problem}; give who holds the token ({NAME_RULE}: a "
                         "labeler token labels as this name)")
    with Node.open(args.home, db=args.db) as node:
        store = node.store
        if args.action == "create":
            secret = new_secret()
            info = store.add_token(sha256_hex(secret), kind="api", role=args.role, name=args.name)
            print(f"token {info.id} ({info.role}, {info.name}); shown only now, store it safely:")
            print(f"  {secret}")
            print("use it as 'Authorization: Bearer <token>', or paste it at /login in a browser")
        elif args.action == "list":
            tokens, now = store.list_tokens(), datetime.now(UTC)
            rows = [{"id": t.id, "kind": t.kind, "role": t.role, "name": t.name, "campaign": t.campaign,
                     "created_at": t.created_at.isoformat(), "revoked": t.revoked_at is not None,
                     "used": t.used_at is not None,
                     "expires_at": None if t.expires_at is None else t.expires_at.isoformat(),
                     "expired": t.expires_at is not None and t.expires_at <= now} for t in tokens]
            if args.json:
                print(json.dumps(rows, indent=2))
            for r in rows if not args.json else []:
                state = ("revoked" if r["revoked"] else "used" if r["used"] else "expired" if r["expired"]
                         else "live")
                print(f"{r['id']:>5} {r['kind']:<8} {r['role']:<8} {r['name']:<20} {r['campaign'] or '-':<16} {state}")
        else:
            store.revoke_token(args.id)
            print(f"token {args.id} revoked")
    return 0
