"""The results table: one row per (model, pair, condition, seed).

This is the contract between the runner (which writes rows), the statistics
and the report (which read them). Columns:

==================  ==========================================================
column              meaning
==================  ==========================================================
unit                unique key ``model|seed|pair_id|condition``
model               model spec as configured (e.g. ``stories260K``)
seed                sampling seed of this run (int)
pair_id             pair index (int, 0..n-1)
condition           condition name (``baseline``, ``transfer``, ...)
source_id           prompt-bank id of the pair's source (cluster for stats)
target_id           prompt-bank id of the pair's target
source_group        bank group of the source (e.g. ``L5``, ``story_source``)
target_group        bank group of the target
prompt_role         which prompt was generated from: ``target`` or ``source``
                    (``source_direct``, the ceiling)
plan                the condition's plan in the mini-language
text                the generated continuation (without the prompt)
n_prompt_tokens     tokens of the prompt fed (BOS included)
n_new_tokens        tokens generated
finish_reason       ``eos`` or ``length``
decode_path         the decode loop and attention kernel that made the tokens,
                    ``<loop>/<attention>`` (``graph/ragged``, ``eager/sdpa``,
                    ...; :mod:`transferlab.decode_paths`): float32 tokens do
                    not depend on it, bf16 rounding does. Rows of one batch
                    share a path; a pair's conditions may be in different
                    batches.
target_kept         target survival: the share of the target prompt's message
                    tokens (BOS and chat-template tokens excluded) whose
                    keys and values the plan left the target's own in every
                    layer (:mod:`transferlab.interventions.survival` says what
                    overwrites a slot: KV splices, prompt-phase k/v_proj
                    writes, residual replacements; prepend and insert keep
                    every slot; a self-sourced splice writes the target's own
                    slots back). 1.0 for a plan that edits no keys/values;
                    below 0.5 the report warns: the condition replaces the
                    target rather than transferring into it
target_kept_any     the share whose keys and values survive in at least one
                    layer (a layer-band splice keeps them in the others)
<score columns>     one float column per scorer, named after it
                    (``seed_v1``, ``strict``, ``source_overlap``, ``collapse``,
                    ``source_lexicon``, ``logit_markers``, ...)
target_overlap      (scorer, target fidelity) share of the pair's target
                    prompt's content words the text uses, 0-1 (the mirror of
                    ``source_overlap``; also for ``source_direct`` rows)
answer              (scorer, target fidelity) 1.0 if the text contains an
                    accepted answer of the pair's target (the bank's
                    ``answer`` field), 0.0 if not, NaN for targets without one
target_answer_logprob  (``scoring.target_logprob``, target fidelity) mean
                    natural log-probability, under this row's condition (its
                    prompt, source and plan: KV splices, prompt- and
                    decode-phase interventions), of the first
                    ``scoring.target_logprob_k`` tokens of the reference
                    condition's continuation of the same (model, seed, pair),
                    teacher forced (untempered distribution; fewer tokens where
                    the reference stopped earlier, NaN where it made none). The
                    reference row scores its own tokens under the plain model.
                    After the scorer columns and ``logit_markers``.
rv_source           R_V of the source prompt (NaN if short; see rv_status)
rv_target           R_V of the target prompt
n_interventions     interventions in the condition's plan
n_never_fired       of those, how many never acted on this example
audit               JSON list of this example's audit rows
==================  ==========================================================

``summary.json`` lists the score columns under ``"scores"``.

The exports (``results.csv``, ``results.jsonl``, ``results.parquet``) and
``tl.load_results(RUN_DIR)`` also carry ``source_text`` and ``target_text``
after ``target_group``: the pair's prompts, joined in from the run's record of
them (:mod:`transferlab.experiments.exports`); the store's rows hold the ids
only, so these columns change no row and no results version.
"""

from __future__ import annotations

BASE_COLUMNS = [
    "unit",
    "model",
    "seed",
    "pair_id",
    "condition",
    "source_id",
    "target_id",
    "source_group",
    "target_group",
    "prompt_role",
    "plan",
    "text",
    "n_prompt_tokens",
    "n_new_tokens",
    "finish_reason",
    "decode_path",
    "target_kept",
    "target_kept_any",
]
TAIL_COLUMNS = ["rv_source", "rv_target", "n_interventions", "n_never_fired", "audit"]


def unit_key(model: str, seed: int, pair_id: int, condition: str) -> str:
    return f"{model}|{seed}|{pair_id}|{condition}"


# The version of the code's results: bump it in any change after which a config, bank and model that gave
# some rows would give different ones (sampling, scoring, intervention numerics, pairing, row columns).
# A run records it; ``--resume`` refuses a run recorded under another, since the table would mix the two.
# 2: the decode_path column; 3: target fidelity (target_overlap, answer, target_answer_logprob) and target
# survival (target_kept, target_kept_any; self-splices exact), one bump for both (issue 21)
RESULTS_VERSION = 3
