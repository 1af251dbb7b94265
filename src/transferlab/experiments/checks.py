"""Checks that a validated config can run, made before any generation.

The schema (``config.py``) knows nothing of prompt banks, scorers or models.
Two more gates close the gap, so a mistake stops a run at once with its key
path instead of hours into it:

- :func:`preflight` (no model needed; before the run directory exists): the
  bank and its groups, whether ``prompts.n`` pairs can be drawn, the scorer
  names, the R_V site.
- :func:`check_plans` (right after a model is loaded): every condition's plan
  against that model — layers in range, heads that exist, windows no longer
  than the shortest prompt they read from.
"""

from __future__ import annotations

from ..interventions import InterventionError, KVSplice
from ..interventions.splice import splice_layers
from ..sites import ACTIVATION_SITES, SiteError
from .config import ConfigError, ExperimentConfig


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def preflight(config: ExperimentConfig) -> list:
    """Raise :class:`ConfigError` listing every problem found without a model; return the pairs."""
    from ..metrics.scorers import SCORERS
    from ..prompts import load_bank, make_pairs

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
                pairs = make_pairs(
                    pools["sources"], pools["targets"], p.n, p.pair_seed, reuse=p.reuse, length_match=p.length_match
                )
            except ValueError as exc:
                hint = "" if p.reuse else " (or set prompts.reuse = true)"
                problems.append(("prompts.n", f"{exc}; lower prompts.n{hint}"))
    for name in config.scoring.scorers:
        if name not in SCORERS:
            problems.append(("scoring.scorers", f"unknown scorer {name!r}; registered: {', '.join(sorted(SCORERS))}"))
    columns = set(config.scoring.scorers) | ({"logit_markers"} if config.scoring.logit else set())
    for i, sweep in enumerate(config.sweeps):
        if sweep.kind == "minimal_layers" and sweep.score not in columns:
            problems.append(
                (
                    f"sweeps.{i}.score",
                    f"score {sweep.score!r} is not computed in this run; "
                    f"add it to scoring.scorers (scores: {', '.join(sorted(columns))})",
                )
            )
    if config.rv.enabled and config.rv.site not in ACTIVATION_SITES:
        problems.append(("rv.site", f"unknown site {config.rv.site!r}; R_V reads one of {', '.join(ACTIVATION_SITES)}"))
    from ..models.devices import DeviceError, resolve_device

    for i, spec in enumerate(config.model_specs()):
        if spec.device is not None and spec.device_map is None:
            try:
                resolve_device(spec.device)
            except DeviceError as exc:
                problems.append((f"models.{i}.device" if config.models else "model.device", str(exc)))
    problems.extend(_layer_problems(config))
    if problems:
        raise ConfigError(problems, "config")
    return pairs


def model_depth(spec: str) -> int | None:
    """The number of layers of a model spec, read without loading weights (None if unknown here)."""
    from pathlib import Path

    try:
        if spec.startswith("tiny:"):
            from ..models.tiny import tiny_config

            return tiny_config(spec[5:].split(":")[0]).num_hidden_layers
        if spec.startswith("random:"):
            from ..models.random import SHAPES

            return int(SHAPES[spec[7:].split(":")[0]]["num_hidden_layers"])
        if spec == "stories260K" or spec.lower().endswith(".gguf"):
            from ..models.embedded import embedded_path
            from ..models.gguf_check import check_gguf

            path = embedded_path() if spec == "stories260K" else Path(spec)
            value = check_gguf(path).metadata.get("llama.block_count")
            return int(value) if value is not None else None
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(spec, local_files_only=True)
        return int(getattr(cfg, "num_hidden_layers", 0)) or None
    except Exception:  # unknown offline, a bad spec: the model load reports it properly
        return None


def _layer_problems(config: ExperimentConfig) -> list[tuple[str, str]]:
    """Layers out of range in any condition's plan or in the R_V settings, with key paths,
    for every model whose depth is known without loading it."""
    from ..interventions import KVSplice
    from ..interventions.splice import splice_layers
    from ..sites import resolve_layer

    out = []
    for m, spec in enumerate(config.model_specs()):
        depth = model_depth(spec.spec)
        if depth is None:
            continue
        on = f"{spec.spec}: "
        for i, cond in enumerate(config.conditions):
            for inter in cond.parsed_plan():
                try:
                    if isinstance(inter, KVSplice):
                        splice_layers(inter, depth)
                    else:
                        resolve_layer(inter.layer, depth)
                except (SiteError, InterventionError) as exc:
                    out.append((f"conditions.{i}.plan", f"{on}condition {cond.name!r}: {inter.describe()}: {exc}"))
        if config.rv.enabled:
            for key in ("early", "late"):
                try:
                    resolve_layer(getattr(config.rv, key), depth)
                except SiteError as exc:
                    out.append((f"rv.{key}", f"{on}{exc}"))
    return out


def _check_heads(model, inter) -> None:
    heads = getattr(inter, "heads", None)
    if not heads:
        return
    ad = model.adapter
    query = inter.site == "q_proj" or getattr(inter, "head_kind", "kv") == "query"
    n, what = (ad.n_heads, "query") if query else (ad.n_kv_heads, "key/value")
    bad = [h for h in heads if not 0 <= h < n]
    if bad:
        raise InterventionError(f"{what} head(s) {bad} do not exist: the model has {n} {what} heads (0..{n - 1})")


def _shortest(model, texts: list[str]) -> int:
    """Fewest tokens (BOS excluded) among ``texts``."""
    from ..engine.batching import encode

    bos = model.tokenizer.bos_token_id
    return min(len(ids) - int(bool(ids) and ids[0] == bos) for ids in encode(model.tokenizer, sorted(set(texts))))


def check_plans(config: ExperimentConfig, model, model_name: str, conditions, pairs) -> None:
    """Raise :class:`ConfigError` naming each condition whose plan cannot run on ``model``."""
    from .units import generation_settings

    index = {c.name: i for i, c in enumerate(config.conditions)}
    problems: list[tuple[str, str]] = []
    shortest: dict[str, int] = {}

    def fewest(role: str) -> int:
        if role not in shortest:
            texts = [getattr(p, f"{role}_text") for p in pairs]
            shortest[role] = _shortest(model, texts) if texts else 0
        return shortest[role]

    for cond in conditions:
        where = f"conditions.{index[cond.name]}.plan" if cond.name in index else f"sweep condition {cond.name}"
        flavour = generation_settings(config, cond)["flavour"]
        for inter in cond.parsed_plan():
            try:
                if isinstance(inter, KVSplice):
                    splice_layers(inter, model.n_layers)
                    continue
                model.layer(inter.layer)
                _check_heads(model, inter)
                window = getattr(inter, "window", None)
                if window is not None and flavour == "corrected":
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
    if problems:
        raise ConfigError(problems, f"the config's plans on {model_name} ({model.n_layers} layers)")


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
