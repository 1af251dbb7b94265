"""The minimal layer set: greedy backward elimination over KV-splice layers.

Start from the all-layer KV splice and its effect E_full (mean paired
difference of ``score`` vs the reference condition). Each round tries
removing every remaining layer, in one mixed batch of conditions, and keeps
the removal that leaves the largest effect, as long as that effect is at
least ``keep_share * E_full``. It stops when no removal stays above the
threshold (or one layer is left). Every evaluated set is an ordinary
condition in the results (named ``kv[...]``), and the path taken is saved
in the run store and shown in the report. Costs at most n(n+1)/2 conditions
for n layers; ``n_search`` limits the pairs used.
"""

from __future__ import annotations

import numpy as np

from ..interventions import KVSplice, Plan
from .config import Condition
from .units import plan_units


def _name(layers) -> str:
    return "kv[" + ",".join(map(str, sorted(layers))) + "]"


def _condition(layers) -> Condition:
    return Condition(name=_name(layers), plan=str(Plan((KVSplice(layers=tuple(sorted(layers))),))))


class _Stopped(Exception):
    pass


def minimal_layers_search(runner, model, model_name: str, pairs, sweep, rv_rows) -> dict | None:
    """Run the search (see the module docstring); None if the runner stopped at ``max_batches``."""
    try:
        return _search(runner, model, model_name, pairs, sweep, rv_rows)
    except _Stopped:
        return None


def _search(runner, model, model_name: str, pairs, sweep, rv_rows) -> dict:
    cfg = runner.config
    n = min(len(pairs), sweep.n_search or len(pairs))
    reference = cfg.reference
    conds = {c.name: c for c in cfg.conditions}

    def effects(sets: list[tuple[int, ...]]) -> dict[tuple[int, ...], float]:
        todo = {_name(s): _condition(s) for s in sets}
        allc = {**conds, **todo}
        done = runner.store.done_units()
        wanted = [conds[reference]] + list(todo.values())
        units = [u for u in plan_units(model_name, cfg.seeds, n, wanted) if u.key not in done]
        runner.execute(model, model_name, pairs, allc, units, rv_rows)
        if runner.stopped:  # a partial run (max_batches): the arms are incomplete, so no effects
            raise _Stopped
        df = runner.store.results()
        df = df[(df.model == model_name) & (df.pair_id < n)]
        ref = df[df.condition == reference].set_index(["pair_id", "seed"])[sweep.score]
        out = {}
        for s in sets:
            arm = df[df.condition == _name(s)].set_index(["pair_id", "seed"])[sweep.score]
            out[s] = float(np.nanmean((arm - ref).to_numpy()))
        return out

    current = tuple(range(model.n_layers))
    full = effects([current])[current]
    threshold = sweep.keep_share * full
    path = [{"layers": list(current), "effect": full, "removed": None}]
    while len(current) > 1 and full > 0:
        candidates = [tuple(x for x in current if x != drop) for drop in current]
        eff = effects(candidates)
        best = max(candidates, key=lambda s: eff[s])
        if eff[best] < threshold:
            path.append(
                {"tried": {_name(s): eff[s] for s in candidates}, "stopped": "every removal falls below the threshold"}
            )
            break
        removed = [x for x in current if x not in best][0]
        current = best
        path.append(
            {
                "layers": list(current),
                "effect": eff[best],
                "removed": removed,
                "tried": {_name(s): eff[s] for s in candidates},
            }
        )
    info = {
        "kind": "minimal_layers",
        "score": sweep.score,
        "reference": reference,
        "pairs": n,
        "full_effect": full,
        "keep_share": sweep.keep_share,
        "threshold": threshold,
        "minimal": list(current),
        "path": path,
        "note": None if full > 0 else "the full splice has no positive effect; nothing to minimise",
    }
    runner.store.set("minimal_layers", info)
    return info
