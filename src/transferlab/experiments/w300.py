"""W300, the speed workload, and W300 as an experiment run by the runner.

W300 = 300 (source, target) pairs x 4 conditions (:data:`W300_CONDITIONS`)
x 150 new tokens over random token-id prompts (:func:`make_workload`). This
module is its one definition: :mod:`transferlab.bench` and ``benchmarks/``
import it from here. :mod:`transferlab.bench` times W300 in one process with
one ``generate``
call. Scale-out (issue 7) times the same work through the experiment runner
(config, run store, executors), so that one GPU in-process can be compared
with Ray workers on several GPUs. This module turns W300 into the two things
the runner reads:

- a **prompt bank** (:func:`write_w300_bank`): bank ``w300`` with groups
  ``w300_source`` and ``w300_target``, whose prompt texts are the token ids
  of :func:`make_workload` written as space-separated
  integers (``"1 523 88 ..."``). A random model's tokenizer
  (:class:`~transferlab.models.random.IdTokenizer`) reads them back to exactly
  those ids; the bank's word limits are the workload's token-length ranges
  (a token is a word here), so loading the bank checks them. None of the
  bank pillars describes a speed workload; both groups are filed under
  ``baseline`` and their descriptions say so.
- a **config** (:func:`w300_config`): the four W300 conditions (plans from
  :data:`W300_CONDITIONS`), 150 new tokens at T=0.8 with
  EOS ignored (fixed work), corrected flavour, no R_V, no logit scoring, and
  one cheap text scorer (``collapse``, which reads number texts; the
  word-based scorers see no words in them).

**Pairing.** The runner pairs prompts with :func:`~transferlab.prompts.make_pairs`,
which draws a seeded random matching; it cannot pair source *i* with target
*i*. With ``reuse = false`` and ``n`` equal to the bank's size, every source
and every target is used exactly once: ``n`` distinct pairs made of exactly
the workload's prompts, matched differently from ``make_workload``'s order
(so batches hold the same prompts, in other pairs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import yaml

from .config import ExperimentConfig, validate_config

W300_CONDITIONS = {
    "baseline": "",
    "transfer": "kv:all + v_proj@27:decode",
    "noise": "noise:v_proj@27:decode",
    "wrong_layer": "kv:all + v_proj@5:decode",
}


def make_workload(n_pairs: int = 300, vocab: int = 32000, seed: int = 0, src_len=(60, 120), tgt_len=(8, 40)):
    """W300's prompts as token ids: ``n_pairs`` sources and targets, BOS (id 1) first, lengths drawn uniformly."""
    rng = np.random.default_rng(seed)

    def prompt(lo, hi):
        n = int(rng.integers(lo, hi + 1))
        return [1] + rng.integers(3, vocab, size=n - 1).tolist()

    sources = [prompt(*src_len) for _ in range(n_pairs)]
    targets = [prompt(*tgt_len) for _ in range(n_pairs)]
    return sources, targets


BANK = "w300"
SOURCE_GROUP, TARGET_GROUP = "w300_source", "w300_target"
SRC_LEN, TGT_LEN = (60, 120), (8, 40)  # make_workload's defaults: tokens per prompt, BOS included


def ids_text(ids: list[int]) -> str:
    """A token-id list as bank text: ``[1, 523, 88]`` -> ``"1 523 88"``."""
    return " ".join(str(int(i)) for i in ids)


def _group(
    name: str, role: str, prompts: list[list[int]], lengths: tuple[int, int], n_pairs: int, vocab: int, seed: int
) -> dict:
    digits = max(2, len(str(len(prompts) - 1)))
    return {
        "pillar": "baseline",
        "description": (
            f"W300 {role}s: make_workload(n_pairs={n_pairs}, vocab={vocab}, seed={seed}) as token ids "
            f"({lengths[0]}-{lengths[1]} tokens, BOS first), for speed runs on random:<shape> models. "
            "Filed under the baseline pillar because none of the pillars describes a speed workload."
        ),
        "min_words": lengths[0],
        "max_words": lengths[1],
        "prompts": [{"id": f"{name}_{i:0{digits}d}", "text": ids_text(p)} for i, p in enumerate(prompts)],
    }


def write_w300_bank(directory: str | Path, n_pairs: int = 300, vocab: int = 32000, seed: int = 0) -> Path:
    """Write bank ``w300`` (``w300.prompts.yaml``) into ``directory``; return the directory.

    Prompt ``w300_source_<i>`` is ``make_workload(n_pairs, vocab, seed)[0][i]``,
    ``w300_target_<i>`` is ``[1][i]``. Pass the directory as ``prompts.bank``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sources, targets = make_workload(n_pairs, vocab, seed, src_len=SRC_LEN, tgt_len=TGT_LEN)
    data = {
        "bank": BANK,
        "schema": 1,
        "groups": {
            SOURCE_GROUP: _group(SOURCE_GROUP, "source", sources, SRC_LEN, n_pairs, vocab, seed),
            TARGET_GROUP: _group(TARGET_GROUP, "target", targets, TGT_LEN, n_pairs, vocab, seed),
        },
    }
    header = (
        f"# W300 prompt bank written by transferlab.experiments.w300.write_w300_bank"
        f"(n_pairs={n_pairs}, vocab={vocab}, seed={seed}); texts are token ids.\n"
    )
    text = yaml.safe_dump(data, sort_keys=False, width=1 << 20, default_flow_style=False)
    (directory / f"{BANK}.prompts.yaml").write_text(header + text, encoding="utf-8")
    return directory


def _merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` written over it; nested tables merge key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def w300_data(
    bank_dir: str | Path, model: str = "random:mistral-7b", seeds=(0, 1, 2, 3), n_pairs: int = 300, **overrides
) -> dict:
    """The W300 experiment as config data (see :func:`w300_config`), not yet validated."""
    data = {
        "name": "w300",
        "description": f"W300 speed workload ({n_pairs} pairs x {len(W300_CONDITIONS)} conditions) through the runner",
        "seeds": [int(s) for s in seeds],
        "batch_size": None,
        "model": {"spec": model},
        "prompts": {
            "bank": str(bank_dir),
            "sources": [SOURCE_GROUP],
            "targets": [TARGET_GROUP],
            "n": n_pairs,
            "pair_seed": 0,
            "reuse": False,
            "length_match": False,
        },
        "generation": {
            "max_new_tokens": 150,
            "temperature": 0.8,
            "top_p": 1.0,
            "top_k": 0,
            "greedy": False,
            "flavour": "corrected",
            "stop_at_eos": False,
        },
        "conditions": [{"name": name, "plan": plan} for name, plan in W300_CONDITIONS.items()],
        "scoring": {"scorers": ["collapse"], "logit": False},
        "rv": {"enabled": False},
        "reference": "baseline",
        "primary": "transfer",
    }
    return _merge(data, overrides)


def w300_config(
    bank_dir: str | Path, model: str = "random:mistral-7b", seeds=(0, 1, 2, 3), n_pairs: int = 300, **overrides
) -> ExperimentConfig:
    """The W300 experiment on the bank in ``bank_dir`` (see the module docstring), validated.

    ``overrides`` are config fields written over the defaults; a table merges
    key by key, e.g. ``generation={"max_new_tokens": 8}``, ``output_dir=...``,
    ``batch_size=512``. ``batch_size`` stays None (the runner's automatic
    choice) unless given.
    """
    return validate_config(w300_data(bank_dir, model, seeds, n_pairs, **overrides), "w300_config")


def write_w300_config(path: str | Path, bank_dir: str | Path, **kwargs) -> Path:
    """W300 as a TOML config file at ``path`` (arguments as :func:`w300_config`), for ``transferlab run PATH``."""
    data = w300_data(bank_dir, **kwargs)
    validate_config(data, "w300_config")  # a bad override fails here, not in the run
    path = Path(path)
    path.write_text(toml_text(data), encoding="utf-8")
    return path


def toml_text(data: dict) -> str:
    """Config data as TOML: scalars and lists of scalars, one level of tables, arrays of tables; ``None`` fields
    left out. Anything deeper or of another type is an error, never dropped."""

    def key(k) -> str:
        k = str(k)
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)

    def value(v) -> str:
        if hasattr(v, "item") and not isinstance(v, (list, tuple, dict, str)):
            v = v.item()  # a numpy scalar
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")  # JSON's escapes are TOML's
        if isinstance(v, (list, tuple)) and not _is_table_list(v):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as a TOML value here")

    def fields(table: dict) -> list[str]:
        return [f"{key(k)} = {value(v)}" for k, v in table.items() if v is not None]

    lines = [f"{key(k)} = {value(v)}" for k, v in data.items() if v is not None and not _is_table(v)]
    for name, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{key(name)}]", *fields(v)]
        elif _is_table_list(v):
            for item in v:
                lines += ["", f"[[{key(name)}]]", *fields(item)]
    return "\n".join(lines) + "\n"


def _is_table(v) -> bool:
    return isinstance(v, dict) or _is_table_list(v)


def _is_table_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


__all__ = [
    "write_w300_bank",
    "w300_config",
    "w300_data",
    "write_w300_config",
    "toml_text",
    "ids_text",
    "BANK",
    "SOURCE_GROUP",
    "TARGET_GROUP",
]
