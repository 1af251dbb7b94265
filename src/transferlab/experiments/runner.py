"""The runner: an experiment config in, a complete run directory out.

``run_experiment(config)`` pairs prompts, loads each model once, measures R_V
of every prompt, plans the (pair, condition, seed) units, and executes them in
large mixed-condition batches with a progress bar. The runner is the driver:
the model lives on a worker (:mod:`.worker`), in this process or on Ray actors
(:mod:`.executors`), which turns self-describing batches into rows; only the
driver writes the store. Every finished batch is
appended to the run store in one transaction, so a killed run resumes with
``run_experiment(resume=RUN_DIR)`` (``transferlab run --resume RUN_DIR``) and
finishes with exactly the table an uninterrupted run gives: units already done
are skipped, and each unit's tokens depend only on the unit itself.

A run directory holds ``config.json`` (resolved), ``metadata.json``,
``store.sqlite`` (the results as they arrive), ``results.csv``,
``results.jsonl`` and ``results.parquet`` (exports, the prompts' texts joined
in: :mod:`.exports`), ``summary.json``, ``report.md``, ``report.html`` and
``figures/``; ``runs/index.jsonl`` is the ledger.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import pandas as pd
from rich.markup import escape

from ..interventions import never_fired
from ..prompts import load_bank
from ..timings import stage
from .checks import model_tokenizer, preflight
from .config import ConfigError, ExperimentConfig, run_name_problem, validate_config
from .executors import Executor, InProcessExecutor, make_executor
from .exports import PROMPTS_KEY, TOKENS_KEY, join_texts, prompt_records, run_prompts, run_tokens, write_exports
from .lock import RunLock
from .metadata import command_line, engine_setting_changes, environment, ledger_append, ledger_dir, now, write_json
from .pairs import config_pairs
from .progress import progress_text, run_progress
from .resume import (
    FINGERPRINT,
    check_resumable,
    differences,
    fingerprint,
    model_differences,
    read_run_config,
    refuse,
)
from .store import RunDirError, RunStore
from .units import WorkUnit, expand_conditions, generation_settings, plan_units, steering_files
from .worker import ModelFacts, ModelRequest, UnitBatch


def _rich_progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def new_run_dir(config: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    problem = run_name_problem(config.name)  # validated configs never get here with one; built ones might
    if problem:
        raise ConfigError([("name", problem)], "config")
    base = Path(config.output_dir) / f"{config.name}-{stamp}-{digest}"
    path, i = base, 1
    while True:  # mkdir, not exists(): two runs started in the same second get different directories
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, i = Path(f"{base}-{i}"), i + 1
        except OSError as exc:  # a read-only or full disk, a file where a folder should be
            raise RunDirError(
                f"cannot create the run directory {path} ({exc.strerror or exc}); make {config.output_dir} "
                "writable (and check free disk space), or set output_dir to a folder you can write"
            ) from None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: still a ``KeyboardInterrupt``, carrying the run directory to resume
    (``transferlab run --resume run_dir``; every finished batch is in its store)."""

    def __init__(self, run_dir: Path):
        super().__init__(f"interrupted; resume with: transferlab run --resume {run_dir}")
        self.run_dir = run_dir


class Runner:
    """Drives one run directory (see the module docstring); the batches run on ``executor``'s workers."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        *,
        progress: bool = True,
        console=None,
        max_batches: int | None = None,
        executor: Executor | None = None,
        report: bool = False,
    ):
        self.config, self.run_dir = config, Path(run_dir)
        self.progress, self.console = progress, console
        self.max_batches = max_batches  # stop early (tests of resumption)
        self.report = report  # a report follows: its libraries are imported while the batches run
        self.executor = executor if executor is not None else InProcessExecutor()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = RunStore(self.run_dir / "store.sqlite")
        self.batches_done = 0
        self.pairing_info: dict | None = None  # set by pairs() for a length-matched draw
        self._config_dict = config.to_dict()  # what every batch carries to its worker
        self.config_json = self._config_dict  # config.json as written (a resume sets what it read)

    # -- prompts -----------------------------------------------------------
    def pairs(self):
        with stage("prompts"):
            self.bank = load_bank(self.config.prompts.bank)
            pairing = config_pairs(self.config, self.bank, model_tokenizer)
            self.pairing_info = pairing.info
            return pairing.pairs

    # -- the model, seen from the driver -----------------------------------------
    def prepare(self, name: str, pairs) -> tuple[ModelFacts, dict[str, dict]]:
        """Have a worker load ``name``, check the plans on it and measure the R_V the store lacks.

        Returns the model's facts and R_V per prompt id (stored ones and new ones,
        which are stored here: the driver is the store's only writer).
        """
        cached = self.store.rv(name)
        ids = sorted({p.source_id for p in pairs} | {p.target_id for p in pairs})
        todo = tuple(i for i in ids if i not in cached) if self.config.rv.enabled else ()
        facts = self.executor.prepare(ModelRequest(self._config_dict, name, todo))
        facts.raise_problems()  # a plan that cannot run on this model: before any generation
        self.check_model(name, facts.identity)
        if facts.rv:
            self.store.put_rv(name, facts.rv)
            cached.update(facts.rv)
        if facts.tokens:
            self.store.set(f"{TOKENS_KEY}:{name}", facts.tokens)
        return facts, cached

    # -- the run's record (see .resume) ------------------------------------------
    def record(self) -> None:
        """Record the fingerprint when the run starts; on a resume, refuse one that differs."""
        recorded = self.store.get(FINGERPRINT)
        if recorded is None:
            self.store.set(FINGERPRINT, fingerprint(self.config_json, self.config.prompts.bank, self.bank.version))
            self.store.set("bank_version", self.bank.version)
            return
        problems = differences(recorded, self.config_json, self.config.prompts.bank, self.bank.version)
        if problems:
            raise refuse(self.run_dir, problems)

    def check_model(self, name: str, identity: dict) -> None:
        """A model's identity, recorded on its first load; a resume on other weights, dtype or device is refused."""
        recorded = self.store.get(FINGERPRINT) or {}
        problems = model_differences(recorded, name, identity)
        if problems:
            raise refuse(self.run_dir, problems)
        if name not in recorded.get("models", {}):
            recorded.setdefault("models", {})[name] = identity
            self.store.set(FINGERPRINT, recorded)

    # -- execution ----------------------------------------------------------
    def run(self) -> Path:
        cfg = self.config
        pairs = self.pairs()
        with stage("setup"):
            self.record()
            self.store.set(PROMPTS_KEY, prompt_records(self.bank, pairs))
            done = self.store.done_units()
        for spec in cfg.model_specs():
            facts, rv_rows = self.prepare(spec.spec, pairs)
            conditions = expand_conditions(cfg, facts.n_layers)
            planned = plan_units(spec.spec, cfg.seeds, len(pairs), conditions)
            self.store.set(f"plan:{spec.spec}", {"conditions": [c.name for c in conditions], "units": len(planned)})
            units = [u for u in planned if u.key not in done]
            self.execute(facts, spec.spec, pairs, {c.name: c for c in conditions}, units, rv_rows)
            if self.stopped:
                return self.run_dir
            for sweep in cfg.sweeps:
                if sweep.kind == "minimal_layers":
                    from .minimal import minimal_layers_search

                    minimal_layers_search(self, facts, spec.spec, pairs, sweep, rv_rows)
                    if self.stopped:
                        return self.run_dir
        return self.run_dir

    @property
    def stopped(self) -> bool:
        """True once ``max_batches`` batches ran (a deliberately partial run)."""
        return self.max_batches is not None and self.batches_done >= self.max_batches

    def batches(
        self, facts: ModelFacts, model_name: str, pairs, conditions: dict, units: list[WorkUnit], rv_rows: dict
    ) -> list[UnitBatch]:
        """``units`` in self-describing batches: grouped by seed and sampler settings, ``batch_size`` each."""
        groups: dict[str, list[WorkUnit]] = defaultdict(list)
        for u in units:
            settings = generation_settings(self.config, conditions[u.condition])
            groups[json.dumps([u.seed, settings], sort_keys=True)].append(u)
        bs = self.config.batch_size or self.auto_batch_size(facts, len(units))
        out = []
        for key, group in groups.items():
            seed, settings = json.loads(key)
            for start in range(0, len(group), bs):
                chunk = tuple(group[start : start + bs])
                names = sorted({u.condition for u in chunk})
                prompt_ids = {i for u in chunk for i in (pairs[u.pair_id].source_id, pairs[u.pair_id].target_id)}
                out.append(
                    UnitBatch(
                        self._config_dict,
                        model_name,
                        seed,
                        settings,
                        chunk,
                        {n: conditions[n].model_dump() for n in names},
                        {i: rv_rows[i] for i in sorted(prompt_ids) if i in rv_rows},
                    )
                )
        return out

    def auto_batch_size(self, facts: ModelFacts, n_units: int) -> int:
        """Units per batch when the config leaves it open: what the worker's GPU holds (times the worker's share of
        the card, and shared out evenly among the executor's workers so that none idles), 256 on a GPU without a
        suggestion, 64 on the CPU."""
        if not facts.device.startswith("cuda"):
            return 64
        if not facts.batch_size:
            return 256
        described = self.executor.describe()
        workers = max(1, int(described.get("workers", 1) or 1))
        share = described.get("gpus_per_worker") or 1  # workers sharing a card: each gets its share of the memory
        suggested = max(1, int(facts.batch_size * min(1.0, float(share))))  # measured before the others loaded
        return max(1, min(suggested, -(-n_units // workers)))

    def execute(
        self, facts: ModelFacts, model_name: str, pairs, conditions: dict, units: list[WorkUnit], rv_rows: dict
    ) -> None:
        """Run ``units`` on the executor; append each batch to the store as it arrives."""
        if not units or self.stopped:
            return
        batches = self.batches(facts, model_name, pairs, conditions, units, rv_rows)
        if self.max_batches is not None:
            batches = batches[: self.max_batches - self.batches_done]
        bar = _rich_progress(self.progress)
        task = None
        if bar is not None:
            bar.start()
            label = escape(f"{self.config.name} on {model_name}")  # the progress bar reads markup
            task = bar.add_task(label, total=sum(len(b.units) for b in batches))
        if self.report:
            import_report_soon()
        results = self.executor.map_batches(batches)
        try:
            with stage("batches"):  # the stages inside are their own; "batches" keeps what lies between them
                self._consume(results, bar, task)
        finally:
            close = getattr(results, "close", None)  # a generator: stop a lazy executor's work
            if close is not None:
                close()
            if bar is not None:
                bar.stop()

    def _consume(self, results, bar, task) -> None:
        """Append each batch's rows to the store as it arrives."""
        for batch, rows in results:
            with stage("store"):
                self.store.append(rows)
            self.batches_done += 1
            if bar is not None:
                bar.advance(task, len(batch.units))


def import_report_soon() -> None:
    """Import the report's libraries (matplotlib, scipy.stats; about 1.5 s) on a background thread.

    The batches keep the GPU busy while the host mostly waits for it, so the
    imports cost the run nothing there; the report then finds them imported
    (a module half-imported by the thread is waited for by Python's import
    lock, never imported twice). Failures are left for the report to raise.
    """
    import threading

    def work() -> None:
        try:
            import scipy.stats  # noqa: F401

            from .. import report  # noqa: F401
        except Exception:
            pass

    threading.Thread(target=work, name="transferlab-import-report", daemon=True).start()


def export_results(run_dir: Path) -> pd.DataFrame:
    """Write the store's table, with the prompts' texts joined in, to ``results.csv``, ``results.jsonl`` and
    ``results.parquet`` (:mod:`.exports`); return it."""
    run_dir = Path(run_dir)
    store = RunStore(run_dir / "store.sqlite", create=False)
    try:
        results = join_texts(store.results(), run_prompts(run_dir, store)[0])
    finally:
        store.close()
    write_exports(run_dir, results)
    return results


def finalize(run_dir: Path, console=None) -> dict:
    """Export the store (CSV, JSONL, Parquet) and (re)write summary.json, report.md, report.html and figures."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)  # first: a directory without its config gets a message, not a traceback
    with stage("export"):
        results = export_results(run_dir)
    if results.empty:
        raise RunDirError(
            f"{run_dir} has no rows stored yet: nothing to report; run it with: transferlab run --resume {run_dir}"
        )
    store = RunStore(run_dir / "store.sqlite", create=False)
    try:
        sweep_info = store.get("minimal_layers")
        prompts, prompts_note = run_prompts(run_dir, store)
        tokens = run_tokens(store, results["model"].unique())
    finally:
        store.close()
    scores = [
        c
        for c in results.columns
        if c in set(config["scoring"]["scorers"]) | {"logit_markers", "target_answer_logprob"}
    ]
    with stage("imports"):
        from ..report import build_summary, write_report

    # R_V by group: the report reads rv_source/rv_target per model and role (source, target) itself
    reference = config.get("reference", "baseline")
    extra = [tuple(p) for p in config.get("comparisons") or []]
    comparisons = None
    if extra:  # every condition vs the reference, then the extra pairs
        present = list(dict.fromkeys(results["condition"]))
        comparisons = [(c, reference) for c in present if c != reference] + [p for p in extra if p[1] != reference]
    with stage("statistics"):
        summary = build_summary(
            results,
            scores,
            reference=reference,
            primary=config.get("primary"),
            sweep=sweep_info,
            comparisons=comparisons,
            self_sourced=[c["name"] for c in config.get("conditions", []) if c.get("source") == "target"],
            analysis=config.get("analysis"),
        )
    summary["scores"] = scores
    progress = run_progress(run_dir)
    summary["progress"] = progress
    if not progress["finished"]:  # first among the warnings: every table below covers the stored rows only
        summary["warnings"].insert(0, {"kind": "incomplete", "message": incomplete_message(run_dir, progress)})
    write_json(run_dir / "summary.json", summary)
    meta_path = run_dir / "metadata.json"
    try:
        metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (ValueError, OSError):
        metadata = {}  # damaged: the report goes without it
    notes = [prompts_note] if prompts_note else []
    write_report(
        run_dir, results, summary, config=config, metadata=metadata, prompts=prompts, tokens=tokens, notes=notes
    )
    return summary


def incomplete_message(run_dir: Path, progress: dict) -> str:
    return (
        f"INCOMPLETE RUN: {progress_text(progress)}. Every table here covers the stored rows only; "
        f"finish the run with: transferlab run --resume {run_dir}"
    )


def run_experiment(
    config: ExperimentConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    console=None,
    max_batches: int | None = None,
    report: bool = True,
    executor: str | Executor | None = None,
    executor_options: dict | None = None,
    on_run_dir=None,
) -> Path:
    """Run (or resume) an experiment; returns the run directory.

    ``executor``: where the batches run: ``"inprocess"`` (default) or ``"ray"``,
    made with ``executor_options`` (``address``, ``workers``,
    ``gpus_per_worker``; see :class:`~.executors.RayExecutor`) once the config
    passed its checks, and closed at the end; or an
    :class:`~.executors.Executor` object, which the caller closes. Results are
    the same whatever runs them; only this process writes the run store.
    ``on_run_dir``: called with the run directory once it exists (every check passed), before the first batch.
    """
    lock, config_json = None, None
    if resume is not None:
        config_json = read_run_config(resume)
        config = validate_config(config_json, str(Path(resume) / "config.json"))
        lock = RunLock(resume).acquire()  # before anything is written: a second resume is refused here
    elif config is None:
        raise ValueError("give a config or resume=RUN_DIR")
    try:
        if resume is not None:
            check_resumable(resume, config_json, config.prompts.bank, _bank_version(config))
        with stage("config"):
            preflight(config)  # bank, pairs, scorers: fail before a run directory exists
        if isinstance(executor, Executor):
            return _run(config, resume, executor, progress, console, max_batches, report, lock, config_json, on_run_dir)
        with make_executor(
            executor, **(executor_options or {})
        ) as made:  # also before the run directory (Ray missing: a clear error)
            return _run(config, resume, made, progress, console, max_batches, report, lock, config_json, on_run_dir)
    finally:
        if lock is not None:
            lock.release()


def _bank_version(config: ExperimentConfig) -> str | None:
    try:
        return load_bank(config.prompts.bank).version
    except (OSError, ValueError, KeyError):  # the preflight reports a bank that does not load
        return None


def _running_entry(run_dir: Path, config: ExperimentConfig) -> dict:
    import os
    import socket

    return {
        "run_dir": str(Path(run_dir).resolve()),
        "name": config.name,
        "status": "running",
        "time": now(),
        "models": [m.spec for m in config.model_specs()],
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def _run(
    config: ExperimentConfig,
    resume,
    executor: Executor,
    progress,
    console,
    max_batches,
    report,
    lock: RunLock | None = None,
    config_json: dict | None = None,
    on_run_dir=None,
) -> Path:
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = new_run_dir(config)
        lock = RunLock(run_dir).acquire()  # a fresh directory: nobody else can hold it
    try:
        if on_run_dir is not None:
            on_run_dir(run_dir)
        return _drive(config, run_dir, resume, executor, progress, console, max_batches, report, config_json)
    finally:
        lock.release()


def _write_failure(path: Path, exc: OSError, run_dir: Path, stored: str) -> RunDirError:
    return RunDirError(
        f"cannot write {path} ({exc.strerror or exc}); {stored} Make {run_dir} writable (and check free disk "
        f"space), then finish it with: transferlab run --resume {run_dir}"
    )


def _drive(config, run_dir: Path, resume, executor, progress, console, max_batches, report, config_json) -> Path:
    with stage("setup"):  # config.json, metadata.json (versions, git commit), the ledger's "running" entry
        metadata = _start_record(config, run_dir, resume, executor)
    if resume is not None and _low_precision(run_dir):
        _note_engine_changes(metadata, console)
    return _drive_batches(
        config, run_dir, resume, executor, progress, console, max_batches, report, config_json, metadata
    )


def _low_precision(run_dir: Path) -> bool:
    """Whether a model of the run computed its stored rows in bfloat16 or float16 (the dtypes its record holds):
    only there can the engine's switches change a token (in float32 every decode path gives the same ones)."""
    try:
        store = RunStore(Path(run_dir) / "store.sqlite", create=False)
        try:
            models = (store.get(FINGERPRINT) or {}).get("models") or {}
        finally:
            store.close()
    except (RunDirError, OSError):
        return True  # unreadable here: say what changed rather than nothing
    return any(str(m.get("dtype")) in ("bfloat16", "float16") for m in models.values() if isinstance(m, dict))


def _note_engine_changes(metadata: dict, console) -> None:
    """Say so when a resume decodes under other engine switches than the run's start: its rows would round
    otherwise in bf16 (each row's ``decode_path`` and the report's warning then show which rows)."""
    changes = engine_setting_changes(metadata)
    if not changes:
        return
    message = (
        f"this resume runs under other engine settings than the run's start ({'; '.join(changes)}): in bf16 "
        "the rows it adds may round differently; each row's decode_path (results.csv) and the report say which"
    )
    if console is None:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    else:
        console.print(f"[yellow]note: {escape(message)}[/]")


def _start_record(config, run_dir: Path, resume, executor) -> dict:
    """Write (or, on a resume, update) config.json, metadata.json and the ledger's entry; return the metadata."""
    try:
        if resume is not None:
            meta_path = run_dir / "metadata.json"  # absent if killed between config.json and metadata.json
            try:
                metadata = json.loads(meta_path.read_text()) if meta_path.exists() else None
            except (ValueError, OSError):
                metadata = None  # damaged: rebuilt below (the store holds what matters)
            metadata = metadata if isinstance(metadata, dict) else {}
            if not metadata:
                metadata = {"name": config.name, "run_dir": str(run_dir), "started": None, "seeds": config.seeds}
                metadata.update(environment())
            metadata.setdefault("resumed_at", []).append(now())
            metadata.setdefault("resume_commands", []).append(command_line())
        else:
            write_json(run_dir / "config.json", config.to_dict())
            metadata = {
                "name": config.name,
                "run_dir": str(run_dir),
                "started": now(),
                "seeds": config.seeds,
                "command": command_line(),
                **environment(),
            }
        metadata["executor"] = executor.describe()
        write_json(run_dir / "metadata.json", metadata)
        ledger_append(ledger_dir(run_dir), _running_entry(run_dir, config))
    except OSError as exc:
        raise _write_failure(Path(exc.filename or run_dir), exc, run_dir, "nothing was computed.") from None
    return metadata


def _drive_batches(
    config, run_dir: Path, resume, executor, progress, console, max_batches, report, config_json, metadata: dict
) -> Path:
    runner = Runner(
        config,
        run_dir,
        progress=progress,
        console=console,
        max_batches=max_batches,
        executor=executor,
        report=report and max_batches is None,
    )
    if config_json is not None:
        runner.config_json = config_json
    try:
        runner.run()
        metadata["bank"] = {"name": config.prompts.bank, "version": runner.bank.version}
        if runner.pairing_info is not None:  # a length-matched draw: how many pairs qualified
            metadata["pairing"] = runner.pairing_info
        steering = steering_files(config)
        if steering:  # which vectors the steer: plans read (a resume does not compare them: check the sha256)
            metadata["steering_vectors"] = steering
        metadata["models"] = _model_metadata(runner, config)
        metadata["fingerprint"] = {
            k: v for k, v in (runner.store.get(FINGERPRINT) or {}).items() if k != "config"
        }  # config.json holds the config
        if not runner.stopped:
            metadata["finished"] = now()
            runner.store.set("finished", metadata["finished"])
        n_rows = len(runner.store.done_units())
        try:
            write_json(run_dir / "metadata.json", metadata)
            if not runner.stopped:
                if report:
                    finalize(run_dir, console=console)
                else:
                    export_results(run_dir)
        except OSError as exc:
            raise _write_failure(
                Path(exc.filename or run_dir), exc, run_dir, f"the {n_rows} rows computed are safe in store.sqlite."
            ) from None
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        try:
            ledger_append(
                ledger_dir(run_dir),
                {
                    "run_dir": str(Path(run_dir).resolve()),
                    "name": config.name,
                    "status": status,
                    "time": now(),
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                },
            )
        except OSError:
            pass  # the ledger is not writable either: the error itself says what to do
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
            raise RunInterrupted(run_dir) from exc
        raise
    finally:
        runner.store.close()
    if runner.stopped:
        return run_dir
    entry = {"run_dir": str(Path(run_dir).resolve()), "name": config.name, "status": "complete", "time": now()}
    entry["rows"] = n_rows
    try:
        ledger_append(ledger_dir(run_dir), entry)
    except OSError as exc:
        raise RunDirError(
            f"the run is complete ({run_dir}), but the ledger {ledger_dir(run_dir) / 'index.jsonl'} could "
            f"not be written ({exc.strerror or exc}); transferlab runs will not list it as complete"
        ) from None
    return run_dir


def _model_metadata(runner: Runner, config: ExperimentConfig) -> list[dict]:
    out = []
    for spec in config.model_specs():
        entry = {"spec": spec.spec, "dtype": spec.dtype, "device": spec.device}
        if spec.device_map:
            entry["device_map"] = spec.device_map
        from ..models.embedded import EMBEDDED, embedded_path
        from ..models.loading import file_sha256

        if spec.spec == EMBEDDED:
            entry["sha256"] = file_sha256(embedded_path())
        elif spec.spec.endswith(".gguf") and Path(spec.spec).is_file():
            entry["sha256"] = file_sha256(Path(spec.spec))
        out.append(entry)
    return out


def never_fired_lines(run_dir: Path) -> list[str]:
    """One warning line per intervention that never fired somewhere in the run's stored rows (what ``transferlab
    run`` prints, locally or for a ``--server`` client)."""
    store = RunStore(Path(run_dir) / "store.sqlite", create=False)
    try:
        dead = never_fired_summary(store.results())
    finally:
        store.close()
    return [
        f"WARNING: intervention {r.description} ({r.hook_point}) never fired in {r.examples_never_fired} of "
        f"{r.examples} example(s)"
        for r in dead.itertuples()
    ]


def never_fired_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Never-fired interventions across a results table (from the per-row audit JSON)."""
    rows = []
    for r in results.itertuples():
        for a in json.loads(r.audit or "[]"):
            rows.append({**a, "example": r.unit, "condition": r.condition})
    return never_fired(pd.DataFrame(rows)) if rows else never_fired(None)
