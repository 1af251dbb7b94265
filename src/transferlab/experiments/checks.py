"""Checks that a validated config can run, made before any generation.

The schema (``config.py``) knows nothing of prompt banks, scorers or models.
Two more gates close the gap, so a mistake stops a run at once with its key
path instead of hours into it:

- :func:`preflight` (no model loaded; before the run directory exists): the
  bank and its groups, whether ``prompts.n`` pairs can be drawn, the scorer
  names, the R_V site, the devices, the engine switches in the environment,
  each model spec (:func:`transferlab.models.loading.check_spec`; a catalog
  model not pulled yet is pulled here), and :func:`check_plans` against each
  model's shape read without weights (:func:`model_shape`: the tiny and
  random shapes, a GGUF's checked metadata and vocabulary, a pulled catalog
  model's, a local or cached Hugging Face config and tokenizer).
- :func:`check_plans` (again right after a model is loaded, for models whose
  shape was not readable before): every condition's plan against that model —
  layers in range, heads that exist, windows no longer than the shortest
  prompt they read from, prompts that with the tokens to generate fit the
  model's context (refused, never truncated: :mod:`transferlab.models.context`).
"""

from __future__ import annotations

from ..interventions import InterventionError, KVSplice, steer_problem
from ..interventions.splice import splice_layers
from ..sites import ACTIVATION_SITES, SiteError
from ..suggest import unknown
from .config import ConfigError, ExperimentConfig


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def preflight(config: ExperimentConfig) -> list:
    """Raise :class:`ConfigError` listing every problem found without a model; return the pairs."""
    from ..metrics.scorers import SCORERS
    from ..prompts import load_bank
    from .pairs import config_pairs

    problems: list[tuple[str, str]] = []
    p = config.prompts
    pairs: list = []
    try:
        bank = load_bank(p.bank)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        problems.append(("prompts.bank", _message(exc)))
        bank = None
    if bank is not None:
        pools = {}
        for key in ("sources", "targets"):
            try:
                pools[key] = bank.select(getattr(p, key))
            except (KeyError, ValueError) as exc:
                problems.append((f"prompts.{key}", _message(exc)))
        if len(pools) == 2:
            try:
                pairs = config_pairs(config, bank, model_tokenizer).pairs
            except ValueError as exc:
                if p.length_tolerance is not None:
                    hint = " (prompts.n, prompts.length_tolerance" + ("" if p.reuse else ", prompts.reuse") + ")"
                    problems.append(("prompts.length_tolerance", f"{exc}{hint}"))
                else:
                    hint = "" if p.reuse else " (or set prompts.reuse = true)"
                    problems.append(("prompts.n", f"{exc}; lower prompts.n{hint}"))
    for name in config.scoring.scorers:
        if name not in SCORERS:
            problems.append(("scoring.scorers", unknown("scorer", name, SCORERS)))
    columns = set(config.scoring.scorers) | ({"logit_markers"} if config.scoring.logit else set())
    if config.scoring.target_logprob:
        columns.add("target_answer_logprob")
        problems.extend(_reference_problems(config))
    for i, sweep in enumerate(config.sweeps):
        if sweep.kind == "minimal_layers" and sweep.score not in columns:
            problems.append(
                (
                    f"sweeps.{i}.score",
                    f"score {sweep.score!r} is not computed in this run; "
                    f"add it to scoring.scorers (scores: {', '.join(sorted(columns))})",
                )
            )
    primary = config.analysis.primary
    if primary is not None and primary not in columns:
        problems.append(
            (
                "analysis.primary",
                f"score {primary!r} is not computed in this run; add it to scoring.scorers or name another "
                f"(--set analysis.primary=...; scores: {', '.join(sorted(columns))})",
            )
        )
    if config.rv.enabled and config.rv.site not in ACTIVATION_SITES:
        problems.append(("rv.site", unknown("site", config.rv.site, ACTIVATION_SITES) + "; R_V reads one of them"))
    from ..models.devices import DeviceError, resolve_device

    for i, spec in enumerate(config.model_specs()):
        if spec.device is not None and spec.device_map is None:
            try:
                resolve_device(spec.device)
            except DeviceError as exc:
                problems.append((f"models.{i}.device" if config.models else "model.device", str(exc)))
    from .. import engine_settings

    problems.extend(engine_settings.problems())  # the environment's engine switches, as the engine reads them
    files = [(f"sweeps.{i}.file", s.steer_problem()) for i, s in enumerate(config.sweeps) if s.kind == "steer_dose"]
    problems.extend((path, msg) for path, msg in files if msg)
    if not any(msg for _, msg in files):  # the sweep's conditions need its file
        problems.extend(_model_problems(config, pairs))
    if problems:
        raise ConfigError(problems, "config")
    return pairs


def _reference_problems(config: ExperimentConfig) -> list[tuple[str, str]]:
    """``target_answer_logprob`` scores the reference condition's continuation: it must be the target alone."""
    ref = next((c for c in config.conditions if c.name == config.reference), None)
    if ref is None:  # the schema reports a missing reference
        return []
    if ref.prompt != "target" or len(ref.parsed_plan()):
        return [
            (
                "scoring.target_logprob",
                f"target_answer_logprob scores the reference condition's continuation as the target's own answer, "
                f"but reference {ref.name!r} is not the target alone (plan {str(ref.parsed_plan()) or 'empty'!r}, "
                f"prompt {ref.prompt!r}); make the reference a condition with an empty plan and prompt = 'target', "
                "or set scoring.target_logprob = false",
            )
        ]
    return []


class ModelShape:
    """What :func:`check_plans` needs of a model, read from its config or file without loading weights."""

    def __init__(
        self, name: str, n_layers: int, n_heads: int, n_kv_heads: int, context, tokenizer_loader=None, hidden_size=None
    ):
        self.name, self.n_layers, self.n_heads, self.n_kv_heads = name, n_layers, n_heads, n_kv_heads
        self.hidden_size = hidden_size  # None where unknown
        self.context = context
        self._loader, self._tokenizer = tokenizer_loader, None

    @property
    def adapter(self):  # check_plans reads model.adapter.n_heads / n_kv_heads
        return self

    @property
    def tokenizer(self):
        if self._tokenizer is None and self._loader is not None:
            try:
                self._tokenizer = self._loader()
            except Exception:  # not readable here: the checks that need it wait for the loaded model
                self._loader = None
        return self._tokenizer

    def layer(self, layer) -> int:
        from ..sites import resolve_layer

        return resolve_layer(layer, self.n_layers)


def _from_hf_config(name: str, cfg, tokenizer_loader=None) -> ModelShape:
    from ..models.context import context_length

    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    hidden = getattr(cfg, "hidden_size", None)
    return ModelShape(
        name,
        int(cfg.num_hidden_layers),
        n_heads,
        n_kv,
        context_length(cfg),
        tokenizer_loader,
        int(hidden) if hidden is not None else None,
    )


def model_shape(spec: str, strict: bool = False) -> ModelShape | None:
    """The shape of a model spec (layers, heads, context, a tokenizer), read without loading weights;
    None where that is not possible here (a hub id not in the cache, a catalog model not pulled yet, a bad spec:
    the load reports it). ``strict``: a GGUF file or a pulled model that cannot be read raises instead."""
    from pathlib import Path

    from ..models.catalog import names as catalog_names
    from ..models.convert import ConversionError
    from ..models.gguf_check import GGUFError
    from ..models.loading import ModelLoadError
    from ..models.pull import PullError

    try:
        if spec in catalog_names():  # a pulled catalog model: its cached Hugging Face directory
            from ..models.pull import cached_path

            where = cached_path(spec)
            if where is None:
                return None
            spec_dir = str(where)
            from transformers import AutoConfig, AutoTokenizer

            cfg = AutoConfig.from_pretrained(spec_dir, local_files_only=True)
            return _from_hf_config(
                spec, cfg, lambda: AutoTokenizer.from_pretrained(spec_dir, local_files_only=True)
            )  # fmt: skip
        if spec.startswith("tiny:"):
            from ..models.embedded import embedded_tokenizer
            from ..models.tiny import tiny_config

            return _from_hf_config(spec, tiny_config(spec[5:].split(":")[0]), embedded_tokenizer)
        if spec.startswith("random:"):
            from types import SimpleNamespace

            from ..models.random import SHAPES, IdTokenizer

            kw = SHAPES[spec[7:].split(":")[0]]
            return _from_hf_config(spec, SimpleNamespace(**kw), lambda: IdTokenizer(kw["vocab_size"]))
        if spec.lower().endswith(".gguf") and spec != "stories260K":
            from ..models.loading import _needs_conversion

            if _needs_conversion(Path(spec)):  # converted once into the cache (the load does the same): its config
                from ..models.pull import convert_local

                directory = str(convert_local(spec))
                from transformers import AutoConfig, AutoTokenizer

                cfg = AutoConfig.from_pretrained(directory, local_files_only=True)
                return _from_hf_config(
                    spec, cfg, lambda: AutoTokenizer.from_pretrained(directory, local_files_only=True)
                )  # fmt: skip
        if spec == "stories260K" or spec.lower().endswith(".gguf"):
            from ..models.embedded import embedded_path
            from ..models.gguf import _build_tokenizer
            from ..models.gguf_check import check_gguf, check_llama

            summary = check_gguf(embedded_path() if spec == "stories260K" else Path(spec))
            sizes = check_llama(summary)
            meta = summary.metadata
            return ModelShape(
                spec, sizes["n_layers"], sizes["n_heads"], sizes["n_kv_heads"], sizes["context"],
                lambda: _build_tokenizer(meta), sizes["hidden"],
            )  # fmt: skip
        from transformers import AutoConfig, AutoTokenizer

        cfg = AutoConfig.from_pretrained(spec, local_files_only=True)
        return _from_hf_config(spec, cfg, lambda: AutoTokenizer.from_pretrained(spec, local_files_only=True))
    except (GGUFError, ModelLoadError, ConversionError, PullError):
        if strict:
            raise
        return None
    except Exception:  # unknown offline, a bad spec: the model load reports it properly
        return None


def model_tokenizer(spec: str):
    """A model spec's tokenizer, read without loading weights (None where that is not possible here): the
    shape's, or a pulled catalog model's from its cache directory."""
    shape = model_shape(spec)
    if shape is not None:
        return shape.tokenizer
    from ..models.catalog import names

    if spec not in names():
        return None
    from ..models.pull import cached_path

    path = cached_path(spec)
    if path is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:  # not readable here: the caller says what to do
        return None


def model_depth(spec: str) -> int | None:
    """The number of layers of a model spec, read without loading weights (None if unknown here)."""
    shape = model_shape(spec)
    return shape.n_layers if shape is not None else None


def _model_problems(config: ExperimentConfig, pairs) -> list[tuple[str, str]]:
    """Every condition's plan (layers, heads, windows, context) and the R_V layers, with key paths, checked
    against each model whose shape is known without loading it: a plan that cannot run on the model
    stops the run before its directory exists, not after the model is loaded into it."""
    from ..models.gguf_check import GGUFError
    from ..models.loading import ModelLoadError, check_spec
    from ..models.pull import PullError
    from ..sites import resolve_layer
    from .units import expand_conditions

    out = []
    for i, spec in enumerate(config.model_specs()):
        where = f"models.{i}" if config.models else "model"
        try:
            check_spec(spec.spec)  # a spec that cannot load: refused here, not in a run directory marked failed
            _pull_if_missing(spec.spec)
            shape = model_shape(spec.spec, strict=True)
        except (ModelLoadError, GGUFError, ValueError, PullError) as exc:
            out.append((where, str(exc)))
            continue
        if shape is None:
            continue
        on = f"{spec.spec}: "
        try:
            check_plans(config, shape, spec.spec, expand_conditions(config, shape.n_layers), pairs)
        except ConfigError as exc:
            out += [(path, on + msg) for path, msg in exc.problems]
        if config.rv.enabled:
            for key in ("early", "late"):
                try:
                    resolve_layer(getattr(config.rv, key), shape.n_layers)
                except SiteError as exc:
                    out.append((f"rv.{key}", f"{on}{exc}"))
    return out


def _pull_if_missing(spec: str) -> None:
    """A catalog model not in the cache yet is pulled now, before the run directory exists: a pull that fails
    (no index, a bad checksum) is a refusal, and its shape can be checked against the plans."""
    from ..models.catalog import names as catalog_names

    if spec not in catalog_names():
        return
    from ..models.catalog import UnknownModelError
    from ..models.convert import ConversionError
    from ..models.loading import ModelLoadError
    from ..models.pull import PullError, cached_path, pull

    if cached_path(spec) is None:
        try:
            pull(spec)
        except (PullError, UnknownModelError, ConversionError) as exc:
            raise ModelLoadError(str(exc)) from exc


def _check_heads(model, inter) -> None:
    heads = getattr(inter, "heads", None)
    if not heads:
        return
    ad = model.adapter
    query = inter.site in ("q_proj", "z") or getattr(inter, "head_kind", "kv") == "query"
    n, what = (ad.n_heads, "query") if query else (ad.n_kv_heads, "key/value")
    bad = [h for h in heads if not 0 <= h < n]
    if bad:
        raise InterventionError(f"{what} head(s) {bad} do not exist: the model has {n} {what} heads (0..{n - 1})")


def _token_counts(model, texts, prompt_format: str = "raw") -> tuple[dict[str, int], dict[str, int]]:
    """Tokens of each distinct text in ``prompt_format``: with BOS (what the context holds) and without (what
    windows read)."""
    from ..engine.batching import encode

    distinct = sorted(set(texts))
    bos = getattr(model.tokenizer, "bos_token_id", None)
    ids = encode(model.tokenizer, distinct, prompt_format)
    return (
        {t: len(i) for t, i in zip(distinct, ids)},
        {t: len(i) - int(bool(i) and i[0] == bos) for t, i in zip(distinct, ids)},
    )


def check_plans(config: ExperimentConfig, model, model_name: str, conditions, pairs) -> None:
    """Raise :class:`ConfigError` naming each condition whose plan cannot run on ``model``: layers,
    heads, windows longer than the shortest prompt they read, and prompts that with the tokens to
    generate do not fit the model's context (refused, not truncated: :mod:`transferlab.models.context`).

    ``model`` is a loaded :class:`~transferlab.models.Model` or a :class:`ModelShape` read without
    weights; checks that need a tokenizer are skipped where it has none, or without pairs.
    """
    from ..engine.batching import TemplateTimeError
    from ..models.context import ContextError, check_fits, context_length
    from .units import generation_settings

    index = {c.name: i for i, c in enumerate(config.conditions)}
    problems: list[tuple[str, str]] = []
    fmt = config.prompts.format
    if fmt == "chat" and model.tokenizer is not None and not getattr(model.tokenizer, "chat_template", None):
        raise ConfigError(
            [
                (
                    "prompts.format",
                    f"'chat' needs the model's chat template, and {model_name} has none "
                    '(a base model?); use prompts.format = "raw"',
                )
            ],
            f"the config's prompts on {model_name}",
        )
    tokens = model.tokenizer is not None and bool(pairs)
    try:
        counts, no_bos = (
            _token_counts(model, [t for p in pairs for t in (p.source_text, p.target_text)], fmt)
            if tokens
            else ({}, {})
        )
    except TemplateTimeError as exc:  # the model's own template: refused here, before the run directory
        raise ConfigError([("prompts.format", f"{model_name}: {exc}")], f"the config's prompts on {model_name}")
    context = getattr(model, "context", None) if not hasattr(model, "hf") else context_length(model)

    def fewest(role: str) -> int:  # tokens without BOS of the shortest prompt in that role
        return min(no_bos[getattr(p, f"{role}_text")] for p in pairs)

    for cond in conditions:
        where = f"conditions.{index[cond.name]}.plan" if cond.name in index else f"sweep condition {cond.name}"
        settings = generation_settings(config, cond)
        plan = cond.parsed_plan()
        for inter in plan:
            try:
                if isinstance(inter, KVSplice):
                    splice_layers(inter, model.n_layers)
                    continue
                model.layer(inter.layer)
                _check_heads(model, inter)
                problem = steer_problem(inter, model)
                if problem:
                    raise InterventionError(problem)
                window = getattr(inter, "window", None)
                if tokens and window is not None and settings["flavour"] == "corrected":
                    reads_source = inter.needs_source and cond.source == "pair"
                    role = "source" if reads_source or cond.prompt == "source" else "target"
                    n = fewest(role)
                    if window > n:
                        raise InterventionError(
                            f"window {window} is longer than the shortest {role} prompt "
                            f"({n} tokens without BOS); use a smaller window or longer prompts"
                        )
            except (SiteError, InterventionError) as exc:
                problems.append((where, f"condition {cond.name!r}: {inter.describe()}: {exc}"))
        if tokens and context is not None:
            prompt_role = "prompts.sources" if cond.prompt == "source" else "prompts.targets"
            try:
                _check_context(config, cond, plan, settings, pairs, counts, context, check_fits)
            except ContextError as exc:
                problems.append((prompt_role, f"condition {cond.name!r}: {exc}"))
    if problems:
        raise ConfigError(problems, f"the config's plans on {model_name} ({model.n_layers} layers)")


def _check_context(config, cond, plan, settings, pairs, counts, context, check_fits) -> None:
    """The generation's context rule (see :mod:`transferlab.models.context`) over every pair of ``cond``."""
    prepend = any(getattr(i, "align", None) in ("prepend", "insert") for i in plan)  # insert: at most the source
    extra_fixed = settings["max_new_tokens"] + (1 if settings["flavour"] == "seed" else 0)
    seen, lengths, extras, labels = set(), [], [], []
    for p in pairs:
        prompt_id, prompt = (p.source_id, p.source_text) if cond.prompt == "source" else (p.target_id, p.target_text)
        own = p.target_text if cond.source == "target" else p.source_text
        extra = extra_fixed + (counts[own] if prepend and plan.needs_source else 0)
        if (prompt_id, extra) in seen:
            continue
        seen.add((prompt_id, extra))
        lengths.append(counts[prompt])
        extras.append(extra)
        labels.append(f"{prompt_id} ({prompt[:40]!r}{'...' if len(prompt) > 40 else ''})")
    what = "new and prepended source tokens" if prepend and plan.needs_source else "new tokens"
    check_fits(context, lengths, extra=extras, what="prompt", labels=labels, extra_text=what)


def layer_collisions(config: ExperimentConfig) -> list[str]:
    """Plans whose hook points, written as different depth fractions, land on one layer of a model.

    On a shallow model (the embedded one has 5 layers) ``v_proj@0.78125 + v_proj@0.84375``
    is ``v_proj@4`` twice: the second patch then writes what the first already wrote. Not an
    error (the plan is valid), but a researcher should know before reading the sweep.
    """
    from ..interventions import KVSplice
    from ..sites import resolve_layer

    out = []
    for spec in config.model_specs():
        depth = model_depth(spec.spec)
        if depth is None:
            continue
        for i, cond in enumerate(config.conditions):
            seen: dict[tuple[str, int], str] = {}
            for inter in cond.parsed_plan():
                if isinstance(inter, KVSplice):
                    continue
                try:
                    key = (inter.site, resolve_layer(inter.layer, depth))
                except (SiteError, ValueError):
                    continue
                if key in seen and seen[key] != str(inter.layer):
                    out.append(
                        f"conditions.{i} ({cond.name}): {inter.site}@{seen[key]} and {inter.site}@{inter.layer} "
                        f"are both {inter.site}@{key[1]} on {spec.spec} ({depth} layers)"
                    )
                seen.setdefault(key, str(inter.layer))
    return out
