"""``adstats db init``: keyspace, tables and the two roles, from ``schema.cql`` (idempotent)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from string import Template

from adstats.config import Settings
from serving_layer.cassandra_session import admin_session

SCHEMA_FILE = Path(__file__).with_name("schema.cql")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


def schema_statements(cfg: Settings) -> list[str]:
    """The CQL statements of schema.cql with the keyspace and replication filled in."""
    if not _IDENTIFIER.match(cfg.keyspace):
        raise ValueError(f"ADSTATS_KEYSPACE {cfg.keyspace!r} is not a valid lowercase identifier")
    text = Template(SCHEMA_FILE.read_text()).substitute(
        keyspace=cfg.keyspace, replication=cfg.replication
    )
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in code.split(";") if stmt.strip()]


def role_statements(cfg: Settings) -> list[tuple[str, tuple]]:
    """Writer: read+write on the keyspace. Reader: SELECT only (the serving API's role)."""
    ks = cfg.keyspace
    stmts: list[tuple[str, tuple]] = []
    for user, password in ((cfg.writer_user, cfg.writer_password),
                           (cfg.reader_user, cfg.reader_password)):
        if not _IDENTIFIER.match(user):
            raise ValueError(f"role name {user!r} is not a valid lowercase identifier")
        stmts.append((f"CREATE ROLE IF NOT EXISTS {user} WITH PASSWORD = %s AND LOGIN = true",
                      (password,)))
    stmts += [
        (f"GRANT SELECT ON KEYSPACE {ks} TO {cfg.writer_user}", ()),
        (f"GRANT MODIFY ON KEYSPACE {ks} TO {cfg.writer_user}", ()),
        (f"GRANT SELECT ON KEYSPACE {ks} TO {cfg.reader_user}", ()),
    ]
    return stmts


def init_db(cfg: Settings, quiet: bool = False) -> None:
    with admin_session(cfg) as session:
        for stmt in schema_statements(cfg):
            session.execute(stmt, timeout=60)
        for stmt, params in role_statements(cfg):
            session.execute(stmt, params, timeout=30)
    if not quiet:
        print(f"keyspace {cfg.keyspace}: tables and roles {cfg.writer_user} (read/write), "
              f"{cfg.reader_user} (read-only) are in place", file=sys.stderr)
