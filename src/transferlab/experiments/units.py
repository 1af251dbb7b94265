"""Work units: the (model, seed, pair, condition) cells of an experiment.

A unit is self-describing and serializable: with the resolved config it says
exactly what to generate, and its key doubles as the example id that seeds
its sampling stream, so a unit gives the same tokens in any batch, in any
order, in any process.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..interventions import KVSplice, Steer, as_plan, load_steering
from ..sites import resolve_layer
from .config import Condition, ExperimentConfig, GenerationOverride
from .schema import unit_key


@dataclass(frozen=True)
class WorkUnit:
    model: str
    seed: int
    pair_id: int
    condition: str

    @property
    def key(self) -> str:
        return unit_key(self.model, self.seed, self.pair_id, self.condition)

    def to_dict(self) -> dict:
        return asdict(self)


def generation_settings(config: ExperimentConfig, condition: Condition) -> dict:
    """The condition's sampler settings: the config's, with the condition's overrides."""
    out = config.generation.model_dump()
    for k, v in condition.generation.model_dump().items():
        if v is not None:
            out[k] = v
    return out


def kv_single_layer_conditions(sweep, n_layers: int) -> list[Condition]:
    """One condition per (layer, window): a KV splice at that layer alone (+ the extra plan)."""
    layers = range(n_layers) if sweep.layers == "all" else sorted({resolve_layer(x, n_layers) for x in sweep.layers})
    extra = as_plan(sweep.extra_plan)
    out = []
    for layer in layers:
        for w in sweep.windows:
            plan = as_plan([KVSplice(layers=(layer,), window=w)]) + extra
            name = f"kv@{layer}" + (f":w{w}" if w else "")
            out.append(Condition(name=name, plan=str(plan), description=f"KV splice at layer {layer} only"))
    return out


def steer_dose_conditions(sweep) -> list[Condition]:
    """One condition per (layer, coefficient): the sweep's steering vector at that layer times that coefficient.
    Layers as the sweep writes them (or the file's indices for "all"), so names do not depend on the model."""
    layers = load_steering(sweep.file).layers if sweep.layers == "all" else list(sweep.layers)
    out = []
    for layer in layers:
        for coef in sweep.coefficients:
            out.append(
                Condition(
                    name=f"steer@{layer}:a{coef:g}",
                    plan=f"steer:{sweep.file}@{layer}:a{float(coef)!r}",
                    description=f"steering vector at layer {layer} times {coef:g}",
                )
            )
    return out


def steering_files(config: ExperimentConfig) -> dict[str, dict]:
    """The steering-vector files a config reads (its conditions' ``steer:`` plans and ``steer_dose`` sweeps):
    per path its sha256, site, layers and the model it was built on, for the run's metadata."""
    paths = [s.file for s in config.sweeps if s.kind == "steer_dose" and s.file]
    for cond in config.conditions:
        paths += [i.file for i in cond.parsed_plan() if isinstance(i, Steer) and i.file]
    out = {}
    for path in dict.fromkeys(paths):
        vectors = load_steering(path)
        out[path] = {
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "site": vectors.site,
            "layers": vectors.layers,
            "built_on": vectors.meta.get("model", {}).get("spec"),
        }
    return out


def expand_conditions(config: ExperimentConfig, n_layers: int) -> list[Condition]:
    conds = list(config.conditions)
    for sweep in config.sweeps:
        if sweep.kind == "kv_single_layer":
            conds.extend(kv_single_layer_conditions(sweep, n_layers))
        elif sweep.kind == "steer_dose":
            conds.extend(steer_dose_conditions(sweep))
    return conds


def plan_units(model: str, seeds: list[int], n_pairs: int, conditions: list[Condition]) -> list[WorkUnit]:
    return [WorkUnit(model, s, p, c.name) for s in seeds for c in conditions for p in range(n_pairs)]


__all__ = ["WorkUnit", "generation_settings", "expand_conditions", "plan_units", "GenerationOverride"]
