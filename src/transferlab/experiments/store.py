"""The run store: an append-only SQLite database (WAL mode) inside the run directory.

Each finished batch is written in one transaction, so a run killed at any
moment loses at most the batch in flight, and ``--resume`` finds exactly the
units already done. Rows are stored as JSON keyed by their unit key
(``model|seed|pair_id|condition``); R_V per prompt is cached in its own table.
CSV/JSONL files are exports, made from the store.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
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

    def close(self) -> None:
        self.db.close()

    def done_units(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT unit FROM results")}

    def append(self, rows: list[dict]) -> None:
        """Write one batch of result rows atomically (all or nothing)."""
        payload = [(r["unit"], json.dumps({k: _clean(v) for k, v in r.items()})) for r in rows]
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT OR REPLACE INTO results (unit, row) VALUES (?, ?)", payload)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def results(self) -> pd.DataFrame:
        rows = [json.loads(r[0]) for r in self.db.execute("SELECT row FROM results ORDER BY unit")]
        df = pd.DataFrame(rows)
        for col in df.columns:  # NaN is stored as null: a score column that is all NaN must stay numeric
            values = df[col]
            if values.dtype == object and values.map(lambda v: v is None or isinstance(v, (int, float))).all():
                df[col] = pd.to_numeric(values).astype(float)
        return df

    def put_rv(self, model: str, rows: dict[str, dict]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO prompt_rv (model, prompt_id, row) VALUES (?, ?, ?)",
            [(model, pid, json.dumps({k: _clean(v) for k, v in r.items()})) for pid, r in rows.items()],
        )
        self.db.execute("COMMIT")

    def rv(self, model: str) -> dict[str, dict]:
        return {
            pid: json.loads(row)
            for pid, row in self.db.execute("SELECT prompt_id, row FROM prompt_rv WHERE model = ?", (model,))
        }

    def set(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default
