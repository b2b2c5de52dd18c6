"""The node's configuration: where its home is, and what `node.toml` in that home says.

One frozen dataclass per subsystem; every field documented. CLI flags override the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import NodeError, UsageError

CONFIG_FILE = "node.toml"
DEFAULT_DB_FILE = "store.db"
DEFAULT_KEY_FILE = "identity.key"
PASSPHRASE_ENV = "REWARDNODE_PASSPHRASE"
HOME_ENV = "REWARDNODE_HOME"
SECURE_COOKIES_KEY = "secure_cookies"
"""The `[server]` key of the labeling app's Secure cookies (NodeConfig.secure_cookies)."""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "node": ("name",),
    "storage": ("url",),
    "identity": ("key_file", "encrypted"),
}
"""The keys of the tables read here; any other key in them is refused (a misspelt `url` must not
silently send every write to a new SQLite file)."""
SUBSYSTEM_TABLES = ("server", "p2p", "rl", "rm")
"""The tables each subsystem reads itself (`NodeConfig.table`): [server] `ServerConfig.from_toml` (and
secure_cookies here), [p2p] `P2PConfig.from_table`, [rl] `RLConfig.from_mapping`, [rm]
`TrainConfig.from_dict`. Each refuses its own unknown keys; a table of any other name is refused here."""


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """The node home: `--home`, else `$REWARDNODE_HOME`, else `~/.rewardnode`."""
    if home is None:
        home = os.environ.get(HOME_ENV) or Path.home() / ".rewardnode"
    return Path(home).expanduser().resolve()


def sqlite_url(path: Path) -> str:
    """SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


@dataclass(frozen=True)
class StorageConfig:
    """Where the preference store lives."""

    url: str
    """SQLAlchemy URL. Default: a SQLite (WAL) file in the node home; PostgreSQL via
    `postgresql+psycopg://user:password@host:5432/dbname`."""


@dataclass(frozen=True)
class IdentityConfig:
    """The node's Ed25519 identity key."""

    key_file: Path
    """Private key, PKCS8 PEM, mode 0600. One identity signs contributions and names the peer."""
    encrypted: bool = False
    """True when the key file is passphrase-encrypted; the passphrase comes from
    `$REWARDNODE_PASSPHRASE` or an interactive prompt."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything `node.toml` configures for one node."""

    home: Path
    """The node's folder: node.toml, the key, the SQLite store, models and logs."""
    name: str
    """Human-readable node name shown to peers, e.g. the organization (`org-a`)."""
    storage: StorageConfig
    identity: IdentityConfig
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, repr=False)
    """Every other [table] of node.toml (server, federation, p2p, rl, ...), as read. Each subsystem
    turns its own table into its frozen config dataclass (e.g. `ServerConfig.from_toml`)."""
    secure_cookies: bool = False
    """`[server] secure_cookies`: mark the labeling app's browser cookies Secure, so browsers send them
    over HTTPS only. Turn it on when the server is reached through a TLS reverse proxy. Read here
    (and left out of `table("server")`) because it belongs to the labeling app, not to ServerConfig."""

    def table(self, name: str) -> Mapping[str, Any]:
        """The `[name]` table of node.toml, empty when absent."""
        return self.tables.get(name, {})

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_FILE

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def validate_name(name: str) -> str:
    """Check a node name: 1-64 characters of letters, digits, '.', '_' and '-'."""
    if not _NAME_RE.match(name):
        raise UsageError(
            f"invalid node name {name!r}; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def resolve_db_url(url: str, home: Path) -> str:
    """The database URL as every command opens it: a relative SQLite path (in node.toml or --db) is
    relative to the node home, not to the current folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return sqlite_url(home / url[len(prefix):])
    return url


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for PostgreSQL and in-memory SQLite.

    >>> str(sqlite_file("sqlite:////srv/a.db")), sqlite_file("sqlite://"), sqlite_file("postgresql://h/db")
    ('/srv/a.db', None, None)
    """
    from storage.db import normalize_url
    from storage.errors import StorageError

    try:
        parsed = normalize_url(url)
    except StorageError:  # a malformed URL: opening the store reports it, with its fix
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_store_file(url: str, config_path: Path, *, from_flag: bool, initialized: bool) -> None:
    """Refuse a SQLite store that does not exist where one must: opening it would create a new, empty one.

    Only `rewardnode init` creates a store. A `--db` file that is not there is a typo; a node.toml file
    that is not there although the node was initialized (its key exists: init makes the store first) is a
    store that was moved or lost. A home without its key yet (a hand-written node.toml) may still start
    its store on first use.
    """
    file = sqlite_file(url)
    if file is None or file.exists():
        return
    if from_flag:
        raise UsageError(f"--db {url}: no SQLite database at {file}; check the path (a relative one is "
                         "inside the node home), or create a new node with its own store: `rewardnode init "
                         "--name NAME --db URL --home NEW_HOME`")
    if initialized:
        raise NodeError(f"the store {file} ({config_path} [storage] url) does not exist, though this "
                        "node was initialized with it; restore it from your backup or fix [storage] url (to "
                        f"start a new, empty store there on purpose, create the empty file: touch {file})")


def load_config(home: Path, *, db_override: str | None = None) -> NodeConfig:
    """Read `home/node.toml`; `db_override` (the `--db` flag) replaces the storage URL."""
    path = home / CONFIG_FILE
    if home.exists() and not home.is_dir():
        raise NodeError(f"{home} is a file, not a node's home folder; pass the node's folder with --home "
                        "(or a new path, for `rewardnode init`)")
    if not path.exists():
        raise NodeError(f"no node at {home} ({CONFIG_FILE} not found); run `rewardnode init --name NAME --home {home}` first")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NodeError(f"{path}: not valid TOML ({exc}); fix the file or move it away and run `rewardnode init` again") from exc

    def section(key: str) -> dict[str, object]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise NodeError(f"{path}: [{key}] must be a table; see the comments written by `rewardnode init`")
        return value

    def string(table: dict[str, object], key: str, where: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            raise NodeError(f"{path}: {where}.{key} must be a non-empty string")
        return value

    known_tables = (*KNOWN_KEYS, *SUBSYSTEM_TABLES)
    for key in raw:
        if key not in known_tables:
            raise NodeError(f"{path}: unknown table [{key}]; the known tables are "
                            f"{', '.join(f'[{t}]' for t in known_tables)}: fix the name (a misspelt table is "
                            "refused, not ignored)")
    for table, keys in KNOWN_KEYS.items():
        for key in section(table):
            if key not in keys:
                raise NodeError(f"{path}: unknown key {key!r} in [{table}]; the known keys there are "
                                f"{', '.join(keys)}: fix the name (a misspelt key is refused, not ignored)")
    node, storage, identity = section("node"), section("storage"), section("identity")
    name = validate_name(string(node, "name", "node"))
    if db_override is not None and not db_override.strip():
        raise UsageError("--db is empty; give a database URL (sqlite:///PATH or postgresql+psycopg://...), "
                         "or leave --db out to use node.toml [storage] url")
    url = db_override or string(storage, "url", "storage", default=f"sqlite:///{DEFAULT_DB_FILE}")
    key_file = Path(string(identity, "key_file", "identity", default=DEFAULT_KEY_FILE))
    key_file = key_file if key_file.is_absolute() else home / key_file
    encrypted = identity.get("encrypted", False)
    if not isinstance(encrypted, bool):
        raise NodeError(f"{path}: identity.encrypted must be true or false")
    url = resolve_db_url(url, home)
    _check_store_file(url, path, from_flag=db_override is not None, initialized=key_file.exists())
    tables = {key: section(key) for key in raw if key not in KNOWN_KEYS}
    secure_cookies = tables.get("server", {}).pop(SECURE_COOKIES_KEY, False)
    if not isinstance(secure_cookies, bool):
        raise NodeError(f"{path}: server.{SECURE_COOKIES_KEY} must be true or false (true when browsers "
                        "reach the server over HTTPS, e.g. through a TLS reverse proxy)")
    return NodeConfig(
        home=home,
        name=name,
        storage=StorageConfig(url=url),
        identity=IdentityConfig(key_file=key_file, encrypted=encrypted),
        tables=tables,
        secure_cookies=secure_cookies,
    )


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(name: str, db_url: str | None, *, encrypted: bool) -> str:
    """The documented node.toml that `rewardnode init` writes."""
    url = db_url or f"sqlite:///{DEFAULT_DB_FILE}"
    return f"""\
# rewardnode node configuration, written by `rewardnode init`.
# Every command reads it from the node home (--home DIR, $REWARDNODE_HOME, or ~/.rewardnode);
# command-line flags override it (e.g. --db URL).

[node]
# Human-readable name shown to peers: letters, digits, '.', '_' and '-'.
name = {_toml_str(name)}

[storage]
# SQLAlchemy URL of the preference store.
#   SQLite (default, WAL mode): "sqlite:///store.db" (a relative path is inside the node home)
#   PostgreSQL: "postgresql+psycopg://user:password@host:5432/dbname"
# Keep this file private (mode 0600) if the URL holds a password.
url = {_toml_str(url)}

[identity]
# Ed25519 private key (PKCS8 PEM, mode 0600), relative to the node home. It signs every
# contribution this node makes and names it to peers. Back it up; never share it.
key_file = {_toml_str(DEFAULT_KEY_FILE)}
# true: the key is encrypted with a passphrase, read from ${PASSPHRASE_ENV} or asked for.
encrypted = {"true" if encrypted else "false"}
"""
