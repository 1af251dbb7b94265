"""A run's results as files and as one frame with the prompts' texts joined in.

The run store keeps each row with its prompt ids only; the texts of the run's
prompts are recorded once in the store (key ``prompts``: id -> text, group,
markers) when the run starts, and the token texts each model was fed under
``prompt_tokens:<model>``. The exports -- ``results.csv``, ``results.jsonl``
and ``results.parquet`` (columnar: a large run's table loads in a fraction of
the CSV's time) -- and :func:`load_results` join ``source_text`` and
``target_text`` into every row, so a continuation can be read beside its
prompts without a join by hand.

A run made before prompts were recorded gets its texts from its bank when the
bank still has the version the run recorded; otherwise the text columns are
left out and :func:`run_prompts` says why.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..atomic import replace_file
from .store import RunDirError, RunStore

PROMPTS_KEY = "prompts"
TOKENS_KEY = "prompt_tokens"
TEXT_COLUMNS = ["source_text", "target_text"]
PARQUET = "results.parquet"


def prompt_records(bank, pairs) -> dict[str, dict]:
    """``{prompt id: {text, group, markers}}`` for every prompt of ``pairs`` (what the store records)."""
    ids = sorted({p.source_id for p in pairs} | {p.target_id for p in pairs})
    out = {}
    for i in ids:
        p = bank.get(i)
        out[i] = {"text": p.text, "group": p.group, "markers": list(p.markers) if p.markers else None}
    return out


def run_prompts(run_dir: str | Path, store: RunStore | None = None) -> tuple[dict[str, dict], str | None]:
    """The run's prompts ``{id: {text, group, markers}}`` and, when they are missing, a note saying why.

    Recorded ones first; for a run from before they were recorded, the run's bank if it still has the version
    the run recorded (a bank edited since would give other texts: none is better than wrong ones)."""
    own = store is None
    store = store or RunStore(Path(run_dir) / "store.sqlite", create=False)
    try:
        recorded = store.get(PROMPTS_KEY)
        version = store.get("bank_version")
    finally:
        if own:
            store.close()
    if recorded:
        return recorded, None
    from .resume import read_run_config

    try:
        bank_name = read_run_config(run_dir)["prompts"]["bank"]
    except (RunDirError, KeyError, TypeError):
        return {}, "the run recorded no prompt texts and its config names no bank"
    from ..prompts import load_bank

    try:
        bank = load_bank(bank_name)
    except (OSError, ValueError) as exc:
        return {}, f"the run recorded no prompt texts and its bank {bank_name!r} does not load here ({exc})"
    if version is not None and bank.version != version:
        return {}, (
            f"the run recorded no prompt texts and its bank {bank_name!r} changed since the run "
            f"(version {str(version)[:12]} then, {bank.version[:12]} now): texts left out rather than guessed"
        )
    out = {p.id: {"text": p.text, "group": p.group, "markers": list(p.markers) if p.markers else None} for p in bank}
    return out, None


def run_tokens(store: RunStore, models) -> dict[str, dict[str, list[str]]]:
    """``{model: {prompt id: token texts as fed}}`` for the models that recorded them (none before this record)."""
    out = {}
    for m in models:
        got = store.get(f"{TOKENS_KEY}:{m}")
        if got:
            out[str(m)] = got
    return out


def join_texts(results: pd.DataFrame, prompts: dict[str, dict]) -> pd.DataFrame:
    """``results`` with ``source_text`` and ``target_text`` placed after ``target_group`` (or at the end); a
    frame without prompts to join comes back unchanged."""
    if not prompts or "source_id" not in results.columns or "target_id" not in results.columns:
        return results
    texts = {i: p.get("text") for i, p in prompts.items()}
    out = results.drop(columns=[c for c in TEXT_COLUMNS if c in results.columns])
    at = list(out.columns).index("target_group") + 1 if "target_group" in out.columns else len(out.columns)
    out.insert(at, "source_text", out["source_id"].map(texts))
    out.insert(at + 1, "target_text", out["target_id"].map(texts))
    return out


def write_exports(run_dir: str | Path, results: pd.DataFrame) -> None:
    """``results.csv``, ``results.jsonl`` and ``results.parquet`` of ``results`` (texts already joined), each in
    place of whatever is at its name (a link is replaced, never written through)."""
    run_dir = Path(run_dir)
    replace_file(run_dir / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    replace_file(run_dir / "results.jsonl", lambda tmp: results.to_json(tmp, orient="records", lines=True))
    replace_file(run_dir / PARQUET, lambda tmp: results.to_parquet(tmp, index=False))


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """A run's results, one row per (model, pair, condition, seed), with ``source_text`` and ``target_text``.

    Reads ``results.parquet`` when it holds every stored row (the store may have grown since: a run still going,
    or resumed), else the run store itself. Raises :class:`RunDirError` naming the problem for a directory that
    is no run directory.
    """
    run_dir = Path(run_dir)
    store_path = run_dir / "store.sqlite"
    if not store_path.is_file():
        parquet = run_dir / PARQUET
        if parquet.is_file():
            return pd.read_parquet(parquet)
        raise RunDirError(f"{run_dir} is not a run directory (no store.sqlite or {PARQUET}); give a run directory")
    store = RunStore(store_path, create=False)
    try:
        with store._guard("counting the stored rows"):
            n = store.db.execute("SELECT count(*) FROM results").fetchone()[0]
        parquet = run_dir / PARQUET
        if parquet.is_file():
            cached = pd.read_parquet(parquet)
            if len(cached) == n and set(TEXT_COLUMNS) <= set(cached.columns):
                return cached
        results = store.results()
        prompts, _ = run_prompts(run_dir, store)
    finally:
        store.close()
    return join_texts(results, prompts)
