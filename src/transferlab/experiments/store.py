"""The run store: an append-only SQLite database (WAL mode) inside the run directory.

Each finished batch is written in one transaction, so a run killed at any
moment loses at most the batch in flight, and ``--resume`` finds exactly the
units already done. Rows are stored as JSON keyed by their unit key
(``model|seed|pair_id|condition``); R_V per prompt is cached in its own table.
CSV/JSONL files are exports, made from the store.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from pathlib import Path

import pandas as pd


class RunDirError(ValueError):
    """A run directory that cannot be read or written as it is; the message names the file and the fix."""


class StoreError(RunDirError):
    """The run store (``store.sqlite``) is damaged, unreadable or not writable."""


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _advice(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "malformed" in text or "not a database" in text or "disk image" in text:
        return (
            "the file is damaged (truncated or overwritten); restore it from a copy, or start a new run "
            "(results.csv, if present, holds the rows of the last export)"
        )
    if "readonly" in text or "read-only" in text or "unable to open" in text or "permission" in text:
        return "it is not writable here; make the run directory and its files writable, then try again"
    if "locked" in text or "busy" in text:
        return "another process holds it; wait for that run to finish"
    if "disk" in text and "full" in text:
        return "the disk is full; free space, then resume the run"
    return "it cannot be used as it is"


class RunStore:
    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path}: no run store here; is {self.path.parent} a run directory?")
        with self._guard("opening"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS results (unit TEXT PRIMARY KEY, row TEXT NOT NULL)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS prompt_rv "
                "(model TEXT, prompt_id TEXT, row TEXT, PRIMARY KEY (model, prompt_id))"
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")

    @contextlib.contextmanager
    def _guard(self, doing: str):
        """sqlite's errors as one :class:`StoreError` naming the file, what failed and what to do."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"run store {self.path}: {doing} failed ({exc}): {_advice(exc)}") from None
        except PermissionError as exc:
            raise StoreError(f"run store {self.path}: {doing} failed ({exc.strerror}): {_advice(exc)}") from None

    def close(self) -> None:
        self.db.close()

    def done_units(self) -> set[str]:
        with self._guard("reading the stored units"):
            return {r[0] for r in self.db.execute("SELECT unit FROM results")}

    def append(self, rows: list[dict]) -> None:
        """Write one batch of result rows atomically (all or nothing)."""
        payload = [(r["unit"], json.dumps({k: _clean(v) for k, v in r.items()})) for r in rows]
        with self._guard("storing a batch of rows"):
            self.db.execute("BEGIN")
            try:
                self.db.executemany("INSERT OR REPLACE INTO results (unit, row) VALUES (?, ?)", payload)
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def results(self) -> pd.DataFrame:
        with self._guard("reading the results"):
            rows = [json.loads(r[0]) for r in self.db.execute("SELECT row FROM results ORDER BY unit")]
        df = pd.DataFrame(rows)
        for col in df.columns:  # NaN is stored as null: a score column that is all NaN must stay numeric
            values = df[col]
            if values.dtype == object and values.map(lambda v: v is None or isinstance(v, (int, float))).all():
                df[col] = pd.to_numeric(values).astype(float)
        return df

    def put_rv(self, model: str, rows: dict[str, dict]) -> None:
        with self._guard("storing R_V"):
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO prompt_rv (model, prompt_id, row) VALUES (?, ?, ?)",
                [(model, pid, json.dumps({k: _clean(v) for k, v in r.items()})) for pid, r in rows.items()],
            )
            self.db.execute("COMMIT")

    def rv(self, model: str) -> dict[str, dict]:
        with self._guard("reading R_V"):
            return {
                pid: json.loads(row)
                for pid, row in self.db.execute("SELECT prompt_id, row FROM prompt_rv WHERE model = ?", (model,))
            }

    def set(self, key: str, value) -> None:
        with self._guard(f"writing {key!r}"):
            self.db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get(self, key: str, default=None):
        with self._guard(f"reading {key!r}"):
            row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default
