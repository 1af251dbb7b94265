"""The worker side of a run: what any process does with a batch of work units.

A run is split in two roles. The **driver** (:mod:`.runner`) plans the work,
owns the run store and is its only writer. A **worker** holds a loaded model
and turns batches of units into result rows. In-process, the driver and one
worker share a process; with Ray (:mod:`.executors`), each worker is an actor
on some GPU of some machine. Both run the code below, so both give the same
rows by construction.

Everything a worker needs travels with the request, as plain picklable data:

- :class:`UnitBatch`: the resolved config (``config.json``), the model spec
  name, the seed, the sampler settings, the units, the plans of their
  conditions (sweep conditions are not in the config) and the R_V rows of
  their prompts. The worker rebuilds the (source, target) pairs from the
  config (pairing is seeded), and each unit's sampling stream is keyed by
  its unit key, so a batch gives the same rows on any worker, in any order.
- :class:`ModelRequest`: "load this model, check the plans against it, measure
  R_V of these prompts"; answered with :class:`ModelFacts`. The driver never
  loads a model itself, so a cluster's driver needs no GPU.

A :class:`Worker` keeps one model loaded at a time (loaded on first use,
reused for every later batch of the same model) and the per-model caches of
logit scoring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..timings import stage
from .config import ConfigError, ExperimentConfig, validate_config
from .units import WorkUnit


@dataclass(frozen=True)
class UnitBatch:
    """Units sharing one model, seed and sampler settings: one ``generate`` call on a worker."""

    config: dict  # the resolved config (``ExperimentConfig.to_dict()``)
    model: str  # a model spec name among the config's models
    seed: int
    settings: dict  # generation settings (the config's, with the conditions' overrides)
    units: tuple[WorkUnit, ...]
    conditions: dict  # condition name -> Condition as a dict, for the conditions of these units
    rv: dict = field(default_factory=dict)  # prompt id -> R_V row, for the prompts of these units

    @property
    def keys(self) -> list[str]:
        return [u.key for u in self.units]


@dataclass(frozen=True)
class ModelRequest:
    """Ask a worker to load ``model``, check the config's plans on it and measure R_V of ``rv_prompts``."""

    config: dict
    model: str
    rv_prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelFacts:
    """What the driver learns from a loaded model (it never holds one itself)."""

    model: str
    n_layers: int
    device: str  # where the model's first weights live ("cpu", "cuda:0", ...)
    rv: dict  # prompt id -> R_V row, for the requested prompts
    plan_problems: list  # (key path, message) per plan that cannot run on this model
    plan_source: str = ""  # what the problems are about (the ConfigError's heading)
    identity: dict = field(default_factory=dict)  # what identifies its numbers (resume.model_identity)
    batch_size: int = 0  # units per batch that fit this worker's free GPU memory (0: no suggestion, a CPU model)
    tokens: dict = field(default_factory=dict)  # prompt id -> token texts as fed (the HTML report's drilldown)

    def raise_problems(self) -> None:
        if self.plan_problems:
            raise ConfigError([tuple(p) for p in self.plan_problems], self.plan_source)


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _path_stamp(spec: str) -> str:
    """A local model's resolved path and newest file time (a checkpoint rewritten in place, or a relative
    path read from another directory, is another model); empty for a name that is no path here."""
    path = Path(spec)
    try:
        if not path.exists():
            return ""
        files = [path] + (list(path.iterdir()) if path.is_dir() else [])
        return f"|{path.resolve()}|{max(f.stat().st_mtime_ns for f in files)}"
    except OSError:
        return ""


class _Context:
    """A config's prompts: the bank and the pairs, rebuilt deterministically from the config."""

    def __init__(self, config: ExperimentConfig):
        from ..prompts import load_bank
        from .checks import model_tokenizer
        from .pairs import config_pairs

        self.config = config
        self.bank = load_bank(config.prompts.bank)
        self.pairs = config_pairs(config, self.bank, model_tokenizer).pairs

    def lexicon(self, prompt_id: str) -> list[str]:
        from ..metrics.seed_v1 import SEED_MARKERS

        markers = self.bank.get(prompt_id).markers
        return list(markers) if markers else list(SEED_MARKERS)


@dataclass(frozen=True)
class GenerationRequest:
    """What a batch's rows were generated from, per row: the prompt fed (text or token ids), the formatted source
    (or None), the plan and the random stream; a teacher-forced rescoring feeds the same."""

    prompts: list
    sources: list
    plans: list
    streams: list
    target_spans: list | None = None  # the prompts' message spans (where an insert splice puts the source's)
    source_spans: list | None = None


class Worker:
    """Executes :class:`UnitBatch` es and :class:`ModelRequest` s; see the module docstring."""

    def __init__(self):
        self._ctx_key: str | None = None
        self._ctx: _Context | None = None
        self._model_key: str | None = None
        self.model = None
        self._top_cache: dict = {}  # (prompt, k) -> own top-k next-token ids, for the loaded model
        self._marker_cache: dict = {}  # lexicon -> marker token ids, for the loaded model's tokenizer
        self._answers: dict = {}  # reference unit key -> its generated token ids (the target's own answer)

    # -- state ------------------------------------------------------------------
    def context(self, config: dict) -> _Context:
        """The config's bank and pairs, rebuilt when the config or the bank's files (their contents, and where a
        relative path leads from this directory: a server runs clients from several) differ from the last."""
        from ..prompts import bank_identity

        try:
            where = bank_identity(config["prompts"]["bank"])
        except (OSError, KeyError, TypeError):
            where = None  # the config's own validation says what is wrong
        key = _config_key(config) + f"|{where}"
        if key != self._ctx_key:
            self._ctx, self._ctx_key = _Context(validate_config(config, "config.json")), key
            self._answers = {}  # another config: other pairs under the same unit keys
        return self._ctx

    def load(self, config: ExperimentConfig, name: str):
        """The model named ``name`` in ``config``, loaded once and kept until another is asked for."""
        specs = [s for s in config.model_specs() if s.spec == name]
        if not specs:
            raise ValueError(f"model {name!r} is not among the config's models")
        spec = specs[0]
        key = spec.model_dump_json() + _path_stamp(spec.spec)
        if key != self._model_key:
            from ..models import load_model

            self.model, self._model_key = None, None  # free the old weights before loading new ones
            self._top_cache, self._marker_cache, self._answers = {}, {}, {}  # token ids belong to one tokenizer
            with stage("model_load"):
                self.model = load_model(
                    spec.spec,
                    dtype=spec.dtype,
                    device=spec.device,
                    attn_implementation=spec.attn_implementation,
                    device_map=spec.device_map,
                    fuse=spec.fuse,
                )
            self._model_key = key
        return self.model

    # -- requests ---------------------------------------------------------------
    def prepare(self, request: ModelRequest) -> ModelFacts:
        """Load the model, check every plan against it, measure R_V of the requested prompts."""
        from .checks import check_plans
        from .units import expand_conditions

        ctx = self.context(request.config)
        cfg = ctx.config
        model = self.load(cfg, request.model)
        problems, source = [], ""
        try:
            with stage("plan_check"):
                check_plans(cfg, model, request.model, expand_conditions(cfg, model.n_layers), ctx.pairs)
        except ConfigError as exc:  # returned as data: it crosses process boundaries
            problems = [list(p) for p in exc.problems]
            source = exc.source
        with stage("rv"):
            rv_rows = self._rv(model, ctx, list(request.rv_prompts)) if cfg.rv.enabled and not problems else {}
        from .resume import model_identity

        identity = model_identity(model.source, str(model.dtype), str(model.device))
        size = self._batch_size(model, ctx, len(expand_conditions(cfg, model.n_layers))) if not problems else 0
        tokens = self._tokens(model, ctx) if not problems else {}
        return ModelFacts(
            request.model, model.n_layers, str(model.device), rv_rows, problems, source, identity, size, tokens
        )

    def run(self, batch: UnitBatch) -> list[dict]:
        """Generate and score one batch; one result row per unit (the columns of :mod:`.schema`)."""
        from ..metrics.logit_scores import logit_mass_score
        from ..metrics.scorers import score_table
        from .config import Condition

        ctx = self.context(batch.config)
        cfg, pairs, bank = ctx.config, ctx.pairs, ctx.bank
        model = self.load(cfg, batch.model)
        conditions = {name: Condition.model_validate(c) for name, c in batch.conditions.items()}
        parsed = {name: c.parsed_plan() for name, c in conditions.items()}  # one Plan per condition, shared by rows
        targets, sources, plans, lexicons, roles = [], [], [], [], []
        for u in batch.units:
            pair, cond = pairs[u.pair_id], conditions[u.condition]
            plan = parsed[u.condition]
            roles.append(cond.prompt)
            targets.append(pair.target_text if cond.prompt == "target" else pair.source_text)
            own = pair.target_text if cond.source == "target" else pair.source_text
            sources.append(own if plan.needs_source else None)
            plans.append(plan)
            lexicons.append(ctx.lexicon(pair.source_id))
        prompts = self._formatted(model, cfg, targets)  # what the model sees, once for generation and logit scoring
        formatted_sources = self._formatted(model, cfg, sources)
        target_spans, source_spans = self._spans(model, cfg, targets), self._spans(model, cfg, sources)
        record = None
        if cfg.scoring.logit:
            record = {
                "markers": [self._marker_ids(model, lex) for lex in lexicons],
                "target_top": self._own_top_ids(model, prompts, cfg.scoring.logit_top_k),
            }
        # one random stream per (model, seed, pair), shared by its conditions: paired differences
        # then differ by the intervention, not by the sampler's draws
        streams = [f"{batch.model}|{batch.seed}|{u.pair_id}" for u in batch.units]
        gen = model.generate(
            prompts,
            sources=formatted_sources,
            target_spans=target_spans,
            source_spans=source_spans,
            plan=plans,
            seed=batch.seed,
            example_ids=batch.keys,
            streams=streams,
            batch_size=len(batch.units),
            record_logits=record,
            prompt_format="raw",  # _formatted applied the config's format already (chat: token ids)
            **batch.settings,
        )
        with stage("scoring"):
            scores = score_table(
                gen.texts,
                [pairs[u.pair_id].source_text for u in batch.units],
                cfg.scoring.scorers,
                lexicons=lexicons,
                targets=[pairs[u.pair_id].target_text for u in batch.units],
                answers=[bank.get(pairs[u.pair_id].target_id).answers for u in batch.units],
            )
            if cfg.scoring.logit:
                scores["logit_markers"] = logit_mass_score(gen.logmass)
        if cfg.scoring.target_logprob:
            with stage("target_logprob"):
                forced = GenerationRequest(prompts, formatted_sources, plans, streams, target_spans, source_spans)
                scores["target_answer_logprob"] = self._target_logprob(model, ctx, batch, gen, forced)
        with stage("rows"):
            return self._rows(batch, gen, scores, plans, roles, pairs, bank)

    def _rows(self, batch: UnitBatch, gen, scores, plans, roles, pairs, bank) -> list[dict]:
        """One result row per unit of ``batch`` from its generation, scores, plans and prompt roles."""
        audit_by_example: dict = {}  # example -> its audit rows (one conversion of the table, not one per example)
        for r in gen.audit.to_dict(orient="records") if len(gen.audit) else []:
            audit_by_example.setdefault(r.pop("example"), []).append(r)
        score_rows = scores.to_dict(orient="records")
        kept, kept_any = gen.target_kept()
        rows = []
        for b, u in enumerate(batch.units):
            pair = pairs[u.pair_id]
            audit = audit_by_example.get(u.key, [])
            rs, rt = batch.rv.get(pair.source_id, {}), batch.rv.get(pair.target_id, {})
            row = dict(
                unit=u.key,
                model=batch.model,
                seed=batch.seed,
                pair_id=u.pair_id,
                condition=u.condition,
                source_id=pair.source_id,
                target_id=pair.target_id,
                source_group=bank.get(pair.source_id).group,
                target_group=bank.get(pair.target_id).group,
                prompt_role=roles[b],
                plan=str(plans[b]),
                text=gen.texts[b],
                n_prompt_tokens=gen.prompt_lengths[b],
                n_new_tokens=len(gen.token_ids[b]),
                finish_reason=gen.finish_reasons[b],
                decode_path=gen.decode_paths[b],
                target_kept=kept[b],
                target_kept_any=kept_any[b],
            )
            row.update({k: float(v) for k, v in score_rows[b].items()})
            row.update(
                rv_source=rs.get("rv", np.nan),
                rv_target=rt.get("rv", np.nan),
                n_interventions=len(plans[b]),
                n_never_fired=int(sum(1 for r in audit if r["never_fired"])),
                audit=json.dumps(audit, default=float),
            )
            rows.append(row)
        return rows

    # -- target fidelity ----------------------------------------------------------
    def _target_logprob(self, model, ctx: _Context, batch: UnitBatch, gen, rows: "GenerationRequest") -> np.ndarray:
        """Per unit, ``target_answer_logprob``: the mean log-probability its condition's model (the unit's own
        prompt, plan and source: KV splices, prompt- and decode-phase interventions) gives the first ``k`` tokens
        of the reference condition's continuation of the same (model, seed, pair), teacher forced by the engine
        (``generate(forced=...)``). Fewer tokens where the reference stopped earlier; NaN where it generated none.
        The reference row scores its own tokens under the plain model."""
        from .schema import unit_key

        cfg = ctx.config
        k = cfg.scoring.target_logprob_k
        answers = self._reference_answers(model, ctx, batch, gen)
        forced = [answers[unit_key(batch.model, batch.seed, u.pair_id, cfg.reference)][:k] for u in batch.units]
        todo = [b for b, f in enumerate(forced) if f]
        out = np.full(len(batch.units), np.nan)
        if not todo:
            return out
        settings = {**batch.settings, "max_new_tokens": max(len(forced[b]) for b in todo)}
        scored = model.generate(
            [rows.prompts[b] for b in todo],
            sources=[rows.sources[b] for b in todo],
            plan=[rows.plans[b] for b in todo],
            seed=batch.seed,
            example_ids=[batch.units[b].key for b in todo],
            streams=[rows.streams[b] for b in todo],
            batch_size=len(todo),
            forced=[forced[b] for b in todo],
            target_spans=None if rows.target_spans is None else [rows.target_spans[b] for b in todo],
            source_spans=None if rows.source_spans is None else [rows.source_spans[b] for b in todo],
            prompt_format="raw",  # the rows' prompts and sources as fed (chat: token ids already)
            **settings,
        )
        for b, lp in zip(todo, scored.token_logprobs):
            out[b] = float(np.mean(lp))
        return out

    def _reference_answers(self, model, ctx: _Context, batch: UnitBatch, gen) -> dict[str, list[int]]:
        """The reference condition's tokens for every pair of ``batch``, by the reference unit's key: from this
        batch where its reference units ran here, from an earlier batch of this worker, else generated now (a
        unit's tokens depend on the unit alone, so they are the tokens its own row has or will have)."""
        from .schema import unit_key
        from .units import generation_settings

        cfg, pairs = ctx.config, ctx.pairs
        for b, u in enumerate(batch.units):
            if u.condition == cfg.reference:
                self._answers[u.key] = list(gen.token_ids[b])
        wanted = {unit_key(batch.model, batch.seed, u.pair_id, cfg.reference): u.pair_id for u in batch.units}
        missing = {key: pair for key, pair in wanted.items() if key not in self._answers}
        if missing:
            ref = next(c for c in cfg.conditions if c.name == cfg.reference)
            keys, ids = list(missing), list(missing.values())
            made = model.generate(
                self._formatted(model, cfg, [pairs[p].target_text for p in ids]),
                plan=ref.parsed_plan(),
                seed=batch.seed,
                example_ids=keys,
                streams=[f"{batch.model}|{batch.seed}|{p}" for p in ids],
                batch_size=len(ids),
                prompt_format="raw",  # _formatted applied the config's format already
                **generation_settings(cfg, ref),
            )
            self._answers.update(zip(keys, (list(t) for t in made.token_ids)))
        return {key: self._answers[key] for key in wanted}

    # -- helpers ----------------------------------------------------------------
    @staticmethod
    def _tokens(model, ctx: _Context) -> dict[str, list[str]]:
        """Token texts of every prompt of the pairs, as fed; empty where the tokenizer cannot show its tokens
        (the report then shows the prompt's text without token positions)."""
        from .tokens import prompt_tokens

        ids = {p.source_id for p in ctx.pairs} | {p.target_id for p in ctx.pairs}
        try:
            with stage("prompt_tokens"):
                return prompt_tokens(model.tokenizer, {i: ctx.bank.get(i).text for i in ids}, ctx.config.prompts.format)
        except Exception:  # display only: never a reason to fail a run
            return {}

    def _batch_size(self, model, ctx: _Context, n_conditions: int) -> int:
        """Units per batch on a GPU: as many of one seed's units (pairs x conditions) as its free memory holds,
        from the longest prompts, sources and ``max_new_tokens`` (:func:`~transferlab.engine.auto_batch_size`)."""
        if model.device.type != "cuda":
            return 0
        from ..engine.batching import encode
        from ..engine.sizing import auto_batch_size, tokens_per_example

        cfg = ctx.config
        with stage("batch_sizing"):
            targets = encode(model.tokenizer, self._formatted(model, cfg, [p.target_text for p in ctx.pairs]))
            sources = encode(model.tokenizer, self._formatted(model, cfg, [p.source_text for p in ctx.pairs]))
            per_example = tokens_per_example(targets + sources, sources, cfg.generation.max_new_tokens)
            return auto_batch_size(model, len(ctx.pairs) * n_conditions, per_example)

    def _rv(self, model, ctx: _Context, prompt_ids: list[str]) -> dict[str, dict]:
        if not prompt_ids:
            return {}
        from ..metrics import rv

        s = ctx.config.rv
        df = rv(
            model,
            self._formatted(model, ctx.config, [ctx.bank.get(i).text for i in prompt_ids]),
            early=s.early,
            late=s.late,
            window=s.window,
            site=s.site,
            formula=s.formula,
            short=s.short,
            prompt_format="raw",  # _formatted applied the config's format already
        )
        return {
            pid: {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for pid, r in zip(prompt_ids, df.drop(columns=["prompt"]).to_dict(orient="records"))
        }

    @staticmethod
    def _formatted(model, config, texts: list):
        """Prompts in the config's format: raw texts as they are; in chat format, token ids of each text as
        the user turn of the model's chat template (``None`` entries stay ``None``). A batch repeats each pair's
        texts under every condition: each distinct text is templated and encoded once."""
        if config.prompts.format == "raw":
            return texts
        from ..engine.batching import encode

        distinct = sorted({t for t in texts if t is not None})
        ids = dict(zip(distinct, encode(model.tokenizer, distinct, config.prompts.format)))
        return [None if t is None else ids[t] for t in texts]

    @staticmethod
    def _spans(model, config, texts: list) -> list[tuple[int, int]]:
        """Each prompt's message span (:func:`~transferlab.engine.batching.message_spans`) in the config's
        format, each distinct text once; ``(0, 0)`` for a ``None`` entry."""
        from ..engine.batching import message_spans

        distinct = sorted({t for t in texts if t is not None})
        spans = dict(zip(distinct, message_spans(model.tokenizer, distinct, config.prompts.format)))
        return [(0, 0) if t is None else spans[t] for t in texts]

    def _marker_ids(self, model, lexicon: list[str]) -> list[int]:
        """Marker token ids of a lexicon, once per model: it decodes the whole vocabulary."""
        from ..metrics.logit_scores import marker_token_ids

        key = tuple(lexicon)
        if key not in self._marker_cache:
            self._marker_cache[key] = marker_token_ids(model.tokenizer, lexicon)
        return self._marker_cache[key]

    def _own_top_ids(self, model, prompts: list[str], k: int) -> list[list[int]]:
        """Top-k next-token ids of each prompt's own (unpatched) last position."""
        import torch

        from ..engine.batching import encode, left_pad, pad_id_of
        from ..engine.capture import forward_capture

        cache = self._top_cache
        prompts = [tuple(p) if isinstance(p, list) else p for p in prompts]  # token-id prompts as cache keys
        todo = sorted({p for p in prompts if (p, k) not in cache}, key=str)
        for start in range(0, len(todo), 128):
            chunk = todo[start : start + 128]
            batch = left_pad(
                encode(model.tokenizer, [list(p) if isinstance(p, tuple) else p for p in chunk]),
                pad_id_of(model.tokenizer),
                model.tokenizer.bos_token_id,
                device=model.device,
            )
            _, _, logits = forward_capture(model, batch, [], False)
            top = torch.topk(logits[:, -1].float(), k, dim=-1).indices.cpu().tolist()
            cache.update(((p, k), t) for p, t in zip(chunk, top))
        return [cache[(p, k)] for p in prompts]


__all__ = ["UnitBatch", "ModelRequest", "ModelFacts", "Worker"]
