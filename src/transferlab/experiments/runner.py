"""The runner: an experiment config in, a complete run directory out.

``run_experiment(config)`` pairs prompts, loads each model once, measures R_V
of every prompt, plans the (pair, condition, seed) units, and executes them in
large mixed-condition batches with a progress bar. Every finished batch is
appended to the run store in one transaction, so a killed run resumes with
``run_experiment(resume=RUN_DIR)`` (``transferlab run --resume RUN_DIR``) and
finishes with exactly the table an uninterrupted run gives: units already done
are skipped, and each unit's tokens depend only on the unit itself.

A run directory holds ``config.json`` (resolved), ``metadata.json``,
``store.sqlite`` (the results as they arrive), ``results.csv`` and
``results.jsonl`` (exports), ``summary.json``, ``report.md`` and
``figures/``; ``runs/index.jsonl`` is the ledger.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..interventions import never_fired
from ..metrics.logit_scores import logit_mass_score, marker_token_ids
from ..metrics.scorers import score_table
from ..metrics.seed_v1 import SEED_MARKERS
from ..prompts import load_bank, make_pairs
from .checks import check_plans, preflight
from .config import ExperimentConfig, validate_config
from .metadata import environment, ledger_append, now, write_json
from .store import RunStore
from .units import WorkUnit, expand_conditions, generation_settings, plan_units


def _rich_progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())


def new_run_dir(config: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    base = Path(config.output_dir) / f"{config.name}-{stamp}-{digest}"
    path, i = base, 1
    while True:  # mkdir, not exists(): two runs started in the same second get different directories
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, i = Path(f"{base}-{i}"), i + 1


class Runner:
    """Executes one run directory; see the module docstring."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, *, progress: bool = True, console=None,
                 max_batches: int | None = None):
        self.config, self.run_dir = config, Path(run_dir)
        self.progress, self.console = progress, console
        self.max_batches = max_batches  # stop early (tests of resumption)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = RunStore(self.run_dir / "store.sqlite")
        self.batches_done = 0
        self._top_cache: dict = {}  # per model (reset on load): prompt -> own top-k ids
        self._marker_cache: dict = {}  # per model: lexicon -> marker token ids

    # -- prompts -----------------------------------------------------------
    def pairs(self):
        p = self.config.prompts
        self.bank = load_bank(p.bank)
        sources = self.bank.select(p.sources)
        targets = self.bank.select(p.targets)
        return make_pairs(sources, targets, p.n, p.pair_seed, reuse=p.reuse, length_match=p.length_match)

    def _lexicon(self, prompt_id: str) -> list[str]:
        markers = self.bank.get(prompt_id).markers
        return list(markers) if markers else list(SEED_MARKERS)

    # -- R_V ------------------------------------------------------------------
    def measure_rv(self, model, name: str, pairs) -> dict[str, dict]:
        from ..metrics import rv

        cached = self.store.rv(name)
        ids = sorted({p.source_id for p in pairs} | {p.target_id for p in pairs})
        todo = [i for i in ids if i not in cached]
        s = self.config.rv
        if s.enabled and todo:
            df = rv(model, [self.bank.get(i).text for i in todo], early=s.early, late=s.late, window=s.window,
                    site=s.site, formula=s.formula, short=s.short)
            rows = {pid: {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                    for pid, r in zip(todo, df.drop(columns=["prompt"]).to_dict(orient="records"))}
            self.store.put_rv(name, rows)
            cached.update(rows)
        return cached

    # -- execution ----------------------------------------------------------
    def run(self) -> Path:
        cfg = self.config
        pairs = self.pairs()
        self.store.set("bank_version", self.bank.version)
        done = self.store.done_units()
        for spec in cfg.model_specs():
            model = self._load(spec)
            conditions = expand_conditions(cfg, model.n_layers)
            check_plans(cfg, model, spec.spec, conditions, pairs)  # before any forward pass
            rv_rows = self.measure_rv(model, spec.spec, pairs)
            units = [u for u in plan_units(spec.spec, cfg.seeds, len(pairs), conditions) if u.key not in done]
            self.execute(model, spec.spec, pairs, {c.name: c for c in conditions}, units, rv_rows)
            if self.max_batches is not None and self.batches_done >= self.max_batches:
                return self.run_dir
            for sweep in cfg.sweeps:
                if sweep.kind == "minimal_layers":
                    from .minimal import minimal_layers_search

                    minimal_layers_search(self, model, spec.spec, pairs, sweep, rv_rows)
                    if self.stopped:
                        return self.run_dir
        return self.run_dir

    @property
    def stopped(self) -> bool:
        """True once ``max_batches`` batches ran (a deliberately partial run)."""
        return self.max_batches is not None and self.batches_done >= self.max_batches

    def _load(self, spec):
        from ..models import load_model

        self._top_cache, self._marker_cache = {}, {}  # token ids belong to one tokenizer
        return load_model(spec.spec, dtype=spec.dtype, device=spec.device, attn_implementation=spec.attn_implementation)

    def execute(self, model, model_name: str, pairs, conditions: dict, units: list[WorkUnit], rv_rows: dict) -> None:
        """Run ``units`` in batches grouped by sampler settings; append each batch to the store."""
        if not units:
            return
        groups: dict[str, list[WorkUnit]] = defaultdict(list)
        for u in units:
            settings = generation_settings(self.config, conditions[u.condition])
            groups[json.dumps([u.seed, settings], sort_keys=True)].append(u)
        bs = self.config.batch_size or (256 if model.device.type == "cuda" else 64)
        bar = _rich_progress(self.progress)
        task = None
        if bar is not None:
            bar.start()
            task = bar.add_task(f"{self.config.name} on {model_name}", total=len(units))
        try:
            for key, group in groups.items():
                seed, settings = json.loads(key)
                for start in range(0, len(group), bs):
                    if self.max_batches is not None and self.batches_done >= self.max_batches:
                        return
                    batch = group[start : start + bs]
                    rows = self.run_batch(model, model_name, pairs, conditions, batch, seed, settings, rv_rows)
                    self.store.append(rows)
                    self.batches_done += 1
                    if bar is not None:
                        bar.advance(task, len(batch))
        finally:
            if bar is not None:
                bar.stop()

    def run_batch(self, model, model_name, pairs, conditions, batch: list[WorkUnit], seed: int, settings: dict, rv_rows) -> list[dict]:
        cfg = self.config
        targets, sources, plans, lexicons, roles = [], [], [], [], []
        for u in batch:
            pair, cond = pairs[u.pair_id], conditions[u.condition]
            plan = cond.parsed_plan()
            roles.append(cond.prompt)
            targets.append(pair.target_text if cond.prompt == "target" else pair.source_text)
            sources.append(pair.source_text if plan.needs_source else None)
            plans.append(plan)
            lexicons.append(self._lexicon(pair.source_id))
        record = None
        if cfg.scoring.logit:
            record = {"markers": [self._marker_ids(model, lex) for lex in lexicons],
                      "target_top": self._own_top_ids(model, targets)}
        gen = model.generate(targets, sources=sources, plan=plans, seed=seed, example_ids=[u.key for u in batch],
                             batch_size=len(batch), record_logits=record, **settings)
        scores = score_table(gen.texts, [pairs[u.pair_id].source_text for u in batch], cfg.scoring.scorers,
                             lexicons=lexicons)
        if cfg.scoring.logit:
            scores["logit_markers"] = logit_mass_score(gen.logmass)
        audit_by_example = {k: g for k, g in gen.audit.groupby("example", sort=False)} if len(gen.audit) else {}
        rows = []
        for b, u in enumerate(batch):
            pair = pairs[u.pair_id]
            a = audit_by_example.get(u.key)
            audit = a.drop(columns=["example"]).to_dict(orient="records") if a is not None else []
            rs, rt = rv_rows.get(pair.source_id, {}), rv_rows.get(pair.target_id, {})
            row = dict(
                unit=u.key, model=model_name, seed=seed, pair_id=u.pair_id, condition=u.condition,
                source_id=pair.source_id, target_id=pair.target_id,
                source_group=self.bank.get(pair.source_id).group, target_group=self.bank.get(pair.target_id).group,
                prompt_role=roles[b], plan=str(plans[b]), text=gen.texts[b],
                n_prompt_tokens=gen.prompt_lengths[b], n_new_tokens=len(gen.token_ids[b]),
                finish_reason=gen.finish_reasons[b],
            )
            row.update({k: float(v) for k, v in scores.iloc[b].items()})
            row.update(rv_source=rs.get("rv", np.nan), rv_target=rt.get("rv", np.nan),
                       n_interventions=len(plans[b]),
                       n_never_fired=int(sum(1 for r in audit if r["never_fired"])),
                       audit=json.dumps(audit, default=float))
            rows.append(row)
        return rows

    def _marker_ids(self, model, lexicon: list[str]) -> list[int]:
        """Marker token ids of a lexicon, once per model: it decodes the whole vocabulary."""
        key = tuple(lexicon)
        if key not in self._marker_cache:
            self._marker_cache[key] = marker_token_ids(model.tokenizer, lexicon)
        return self._marker_cache[key]

    def _own_top_ids(self, model, prompts: list[str]) -> list[list[int]]:
        """Top-k next-token ids of each prompt's own (unpatched) last position."""
        import torch

        from ..batching import encode, left_pad, pad_id_of
        from ..capture import forward_capture

        cache = self._top_cache
        todo = sorted({p for p in prompts if p not in cache})
        k = self.config.scoring.logit_top_k
        for start in range(0, len(todo), 128):
            chunk = todo[start : start + 128]
            batch = left_pad(encode(model.tokenizer, chunk), pad_id_of(model.tokenizer), model.tokenizer.bos_token_id,
                             device=model.device)
            _, _, logits = forward_capture(model, batch, [], False)
            top = torch.topk(logits[:, -1].float(), k, dim=-1).indices.cpu().tolist()
            cache.update(zip(chunk, top))
        return [cache[p] for p in prompts]


def export_results(run_dir: Path) -> pd.DataFrame:
    """Write the store's table to ``results.csv`` and ``results.jsonl``; return it."""
    run_dir = Path(run_dir)
    store = RunStore(run_dir / "store.sqlite")
    try:
        results = store.results()
    finally:
        store.close()
    results.to_csv(run_dir / "results.csv", index=False)
    results.to_json(run_dir / "results.jsonl", orient="records", lines=True)
    return results


def finalize(run_dir: Path, console=None) -> dict:
    """Export the store to CSV/JSONL and (re)write summary.json, report.md and figures."""
    run_dir = Path(run_dir)
    results = export_results(run_dir)
    store = RunStore(run_dir / "store.sqlite")
    sweep_info = store.get("minimal_layers")
    store.close()
    config = json.loads((run_dir / "config.json").read_text())
    scores = [c for c in results.columns if c in set(config["scoring"]["scorers"]) | {"logit_markers"}]
    from ..report import build_summary, write_report

    rv_groups = _rv_by_group(results)
    summary = build_summary(results, scores, reference=config.get("reference", "baseline"),
                            primary=config.get("primary"), rv_groups=rv_groups, sweep=sweep_info)
    summary["scores"] = scores
    write_json(run_dir / "summary.json", summary)
    meta_path = run_dir / "metadata.json"
    metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    write_report(run_dir, results, summary, config=config, metadata=metadata)
    return summary


def _rv_by_group(results: pd.DataFrame) -> pd.DataFrame:
    if not len(results):
        return pd.DataFrame(columns=["prompt_id", "group", "rv"])
    src = results[["source_id", "source_group", "rv_source"]].drop_duplicates("source_id")
    src.columns = ["prompt_id", "group", "rv"]
    tgt = results[["target_id", "target_group", "rv_target"]].drop_duplicates("target_id")
    tgt.columns = ["prompt_id", "group", "rv"]
    return pd.concat([src, tgt], ignore_index=True)


def run_experiment(config: ExperimentConfig | None = None, *, resume: str | Path | None = None,
                   progress: bool = True, console=None, max_batches: int | None = None,
                   report: bool = True) -> Path:
    """Run (or resume) an experiment; returns the run directory."""
    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); nothing to resume")
        config = validate_config(json.loads(cfg_path.read_text()), str(cfg_path))
        preflight(config)
        meta_path = run_dir / "metadata.json"  # absent if killed between config.json and metadata.json
        metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {
            "name": config.name, "run_dir": str(run_dir), "started": None, "seeds": config.seeds, **environment()}
        metadata.setdefault("resumed_at", []).append(now())
    else:
        if config is None:
            raise ValueError("give a config or resume=RUN_DIR")
        preflight(config)  # bank, pairs, scorers: fail before a run directory exists
        run_dir = new_run_dir(config)
        write_json(run_dir / "config.json", config.to_dict())
        metadata = {"name": config.name, "run_dir": str(run_dir), "started": now(), "seeds": config.seeds,
                    **environment()}
    write_json(run_dir / "metadata.json", metadata)
    ledger_append(config.output_dir, {"run_dir": str(run_dir), "name": config.name, "status": "running",
                                      "time": now(), "models": [m.spec for m in config.model_specs()]})
    runner = Runner(config, run_dir, progress=progress, console=console, max_batches=max_batches)
    try:
        runner.run()
    except BaseException as exc:
        runner.store.close()
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        ledger_append(config.output_dir, {"run_dir": str(run_dir), "name": config.name, "status": status,
                                          "time": now(), "error": f"{type(exc).__name__}: {exc}"[:500]})
        raise
    metadata["bank"] = {"name": config.prompts.bank, "version": runner.bank.version}
    metadata["models"] = _model_metadata(runner, config)
    if runner.stopped:
        write_json(run_dir / "metadata.json", metadata)
        runner.store.close()
        return run_dir
    metadata["finished"] = now()
    write_json(run_dir / "metadata.json", metadata)
    n_rows = len(runner.store.done_units())
    runner.store.close()
    if report:
        finalize(run_dir, console=console)
    else:
        export_results(run_dir)
    ledger_append(config.output_dir, {"run_dir": str(run_dir), "name": config.name, "status": "complete",
                                      "time": now(), "rows": n_rows})
    return run_dir


def _model_metadata(runner: Runner, config: ExperimentConfig) -> list[dict]:
    out = []
    for spec in config.model_specs():
        entry = {"spec": spec.spec, "dtype": spec.dtype, "device": spec.device}
        from ..models.loading import EMBEDDED, embedded_path, file_sha256

        if spec.spec == EMBEDDED:
            entry["sha256"] = file_sha256(embedded_path())
        elif spec.spec.endswith(".gguf") and Path(spec.spec).is_file():
            entry["sha256"] = file_sha256(Path(spec.spec))
        out.append(entry)
    return out


def never_fired_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Never-fired interventions across a results table (from the per-row audit JSON)."""
    rows = []
    for r in results.itertuples():
        for a in json.loads(r.audit or "[]"):
            rows.append({**a, "example": r.unit, "condition": r.condition})
    return never_fired(pd.DataFrame(rows)) if rows else never_fired(None)
