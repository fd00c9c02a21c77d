"""The raw tables' time partitions: made as rows for them arrive, dropped by retention.

A partition covers `width_s` seconds of its table's time column, aligned to the epoch, and is
named <table>_p<start in seconds>. Partitions are made for times from the raw retention's cut
to a day ahead of the clock; other rows go to the table's default partition (retention deletes
them there). Several collectors may want one partition at once: it is made under an advisory
lock, after moving the rows its range already has in the default partition (attaching it
would otherwise fail).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from store.postgres.schema import PARTITIONED, Partitioned

FUTURE_S = 86400  # how far ahead of the clock a partition is made


class Partitions:
    """The partitions of the raw tables this store knows of, and how to make and drop them."""

    def __init__(self, width_s: int, raw_retention_s: float, lock: tuple[int, int]) -> None:
        self.width_s, self.raw_retention_s, self.lock = width_s, raw_retention_s, lock
        self.known: dict[str, set[int]] = {p.table: set() for p in PARTITIONED}

    def load(self, cursor: psycopg.Cursor) -> None:
        """Read the partitions that exist (other collectors make them too)."""
        for part in PARTITIONED:
            self.known[part.table] = set(_starts(cursor, part))

    def ensure(self, cursor: psycopg.Cursor, part: Partitioned, values: Iterable[float | None],
               now_s: float) -> None:
        """Make the partitions these values of the table's time column fall in (those in
        the window partitions are made for), inside the caller's transaction."""
        span = self.width_s * part.units
        low, high = (now_s - self.raw_retention_s) * part.units, (now_s + FUTURE_S) * part.units
        wanted = {int(v // span) * self.width_s for v in values
                  if v is not None and low <= v < high}
        for start in sorted(wanted - self.known[part.table]):
            self._make(cursor, part, start)

    def _make(self, cursor: psycopg.Cursor, part: Partitioned, start_s: int) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", self.lock)
        name = f"{part.table}_p{start_s}"
        if cursor.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:  # type: ignore[index]
            low, high = start_s * part.units, (start_s + self.width_s) * part.units
            cursor.execute(f"CREATE TABLE {name} (LIKE {part.table} INCLUDING DEFAULTS)")
            cursor.execute(
                f"WITH moved AS (DELETE FROM {part.table}_default WHERE {part.column} >= %s "
                f"AND {part.column} < %s RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                (low, high))
            cursor.execute(f"ALTER TABLE {part.table} ATTACH PARTITION {name} "
                           f"FOR VALUES FROM ({int(low)}) TO ({int(high)})")
        self.known[part.table].add(start_s)

    def drop_before(self, cursor: psycopg.Cursor, part: Partitioned, cut: float) -> int:
        """Drop the table's partitions wholly before cut (in the column's units); how many
        rows they held."""
        self.known[part.table] = set(_starts(cursor, part))
        dropped = 0
        for start in sorted(self.known[part.table]):
            if (start + self.width_s) * part.units > cut:
                continue
            name = f"{part.table}_p{start}"
            dropped += cursor.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]  # type: ignore[index]
            cursor.execute(f"DROP TABLE {name}")
            self.known[part.table].discard(start)
        return dropped


def _starts(cursor: psycopg.Cursor, part: Partitioned) -> list[int]:
    """The starts (seconds) of a table's partitions, from the catalog."""
    prefix = f"{part.table}_p"
    return [int(name[len(prefix):]) for (name,) in cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (part.table,))
        if name.startswith(prefix) and name[len(prefix):].isdigit()]
