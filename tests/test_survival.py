"""Target survival (``target_kept``), the splices that keep the target (insert, layer bands, the last k
source tokens), and exact self-splices.

Survival maps are checked two ways: against slot arithmetic computed by hand
here, and against the spliced cache itself (a slot is kept exactly where the
cache the engine hands the model still equals the target's own prompt cache,
computed by plain HF in :mod:`engine_reference`).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import LONG, PROMPT, SHORT, STORY, STORY2
from engine_reference import greedy_on_cache, prompt_cache
from test_splice import CacheSpy

from transferlab.engine.batching import encode, message_spans
from transferlab.engine.generation import generate
from transferlab.interventions import InterventionError
from transferlab.interventions.plan import parse_plan
from transferlab.interventions.splice import splice_layers
from transferlab.interventions.survival import kept_shares
from transferlab.interventions.types import KVSplice
from transferlab.models.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

N_NEW = 6
REL = 1e-5  # float32 rounding of a few ops, relative to the values' own scale


def _ids(model, text):
    return model.tokenizer(text)["input_ids"]


def _gen(model, targets, sources, plans, **kw):
    return generate(
        model, targets, sources=sources, plan=plans, greedy=True, max_new_tokens=N_NEW, stop_at_eos=False, **kw
    )


def _close(a, b, rel=REL):
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.numel() == 0:
        return
    scale = max(1.0, b.float().abs().max().item())
    assert (a.float() - b.float()).abs().max().item() <= rel * scale


# --------------------------------------------------------------------------- message spans


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_message_span_in_chat_format_is_the_user_text_only(stories):
    tok = copy.deepcopy(stories.tokenizer)
    tok.chat_template = TEMPLATE
    (ids,) = encode(tok, [PROMPT], "chat")
    ((a, b),) = message_spans(tok, [PROMPT], "chat")
    head = tok(f"{tok.bos_token}[user]", add_special_tokens=False)["input_ids"]
    tail = tok("\n[assistant]", add_special_tokens=False)["input_ids"]
    assert a >= len(head) - 1 and b <= len(ids) - len(tail) + 1  # template tokens stay outside
    assert tok.decode(ids[a:b]).strip() == PROMPT
    assert tok.decode(ids[:a]).strip().endswith("[user]")
    # raw: every token but BOS; token ids: the same by the BOS id
    raw = encode(tok, [PROMPT])[0]
    assert message_spans(tok, [PROMPT]) == [(1, len(raw))] == message_spans(tok, [raw])


# --------------------------------------------------------------------------- survival: slot arithmetic


def _kept_by_hand(P: int, S: int, T: int, n_layers: int, layers, keep_first: bool = True) -> np.ndarray:
    """Corrected right-aligned splice on prefixes of P and S slots (T target tokens): the first
    max(P - S, 0) + 1 slots survive (max(P - S, 0) with splicefirst), and the last token (not in the prefix)."""
    n = max(0, min(P, S) - int(keep_first))
    kept = np.ones((n_layers, T), dtype=bool)
    for layer in layers:
        kept[layer, P - n : P] = False
    return kept


@pytest.mark.parametrize("target,source", [(LONG, PROMPT), (PROMPT, LONG), (PROMPT, STORY2), (SHORT, PROMPT)])
def test_right_keepfirst_keeps_the_first_max_p_minus_s_plus_one_slots(target, source, stories):
    T, S = len(_ids(stories, target)), len(_ids(stories, source))
    g = _gen(stories, [target], [source], "kv:all")
    want = _kept_by_hand(T - 1, S - 1, T, stories.n_layers, range(stories.n_layers))
    assert (want[0, : T - 1].sum()) == max(T - S, 0) + 1  # the rule, on the prefixes
    np.testing.assert_array_equal(g.kept[0], want)
    kept, kept_any = g.target_kept()
    msg = want[:, 1:]  # the message: every token but BOS (raw format)
    assert kept == [msg.all(0).mean()] and kept_any == [msg.any(0).mean()]
    first = _gen(stories, [target], [source], "kv:all:splicefirst")
    np.testing.assert_array_equal(
        first.kept[0], _kept_by_hand(T - 1, S - 1, T, stories.n_layers, range(stories.n_layers), keep_first=False)
    )


def test_plans_without_kv_edits_keep_everything_and_patches_count_where_they_write(stories):
    T = len(_ids(stories, STORY))
    L = stories.n_layers
    plans = ["", "v_proj@2:w4:prompt", "v_proj@2:w4:decode", "k_proj@1:h0:w3:prompt", "resid_post@1:w3:prompt"]
    plans += ["resid_pre@1:w3:prompt", "resid_post@1:w3:prompt:add", "attn_out@1:w3:prompt", "noise:v_proj@3:w2:prompt"]
    g = _gen(stories, [STORY] * len(plans), [STORY2] * len(plans), plans)
    lost = {p: ~k for p, k in zip(plans, g.kept)}

    def only(layers, positions):
        m = np.zeros((L, T), dtype=bool)
        for layer in layers:
            m[layer, positions] = True
        return m

    last = lambda k: list(range(T - k, T))  # noqa: E731  a window's positions: the last k tokens
    np.testing.assert_array_equal(lost[""], only([], []))
    np.testing.assert_array_equal(lost["v_proj@2:w4:prompt"], only([2], last(4)))
    np.testing.assert_array_equal(lost["v_proj@2:w4:decode"], only([], []))  # decode writes new slots only
    np.testing.assert_array_equal(lost["k_proj@1:h0:w3:prompt"], only([1], last(3)))  # one head is enough
    np.testing.assert_array_equal(lost["resid_post@1:w3:prompt"], only(range(2, L), last(3)))
    np.testing.assert_array_equal(lost["resid_pre@1:w3:prompt"], only(range(1, L), last(3)))
    np.testing.assert_array_equal(lost["resid_post@1:w3:prompt:add"], only([], []))  # the target's stream stays
    np.testing.assert_array_equal(lost["attn_out@1:w3:prompt"], only([], []))
    np.testing.assert_array_equal(lost["noise:v_proj@3:w2:prompt"], only([3], last(2)))
    kept, kept_any = g.target_kept()
    assert kept[0] == 1.0 and kept[1] == pytest.approx(1 - 4 / (T - 1)) and kept_any[1] == 1.0


def test_kept_shares_reduce_over_the_message_only():
    kept = np.array([[1, 0, 1, 1, 0], [1, 1, 0, 1, 0]], dtype=bool)
    assert kept_shares(kept, (1, 4)) == (pytest.approx(1 / 3), 1.0)
    assert kept_shares(kept, (3, 5)) == (0.5, 0.5)
    assert all(np.isnan(kept_shares(kept, (2, 2))))


@pytest.mark.parametrize(
    "plan",
    ["kv:all", "kv:early", "kv:late", "kv:1-3:w2", "kv:all:left", "kv:all:p2-6", "kv:0,4:left:w3", "kv:all:insert"],
)
def test_survival_map_is_where_the_spliced_cache_still_equals_the_targets_own(plan, stories):
    """Independent of the slot arithmetic: compare the cache the model receives with the target's own."""
    ti = _ids(stories, STORY)
    with CacheSpy(stories) as spy:
        g = _gen(stories, [STORY], [LONG], plan)
    own = prompt_cache(stories.hf, ti[:-1])
    P = len(ti) - 1
    for layer in range(stories.n_layers):
        k, v = spy.kv[layer]
        if plan.endswith("insert"):  # the target's slots are all there, some moved: nothing is overwritten
            assert g.kept[0].all()
            continue
        same = ((k - own[layer][0]).abs().amax(dim=(0, 1, 3)) <= REL) & (
            (v - own[layer][1]).abs().amax(dim=(0, 1, 3)) <= REL
        )
        np.testing.assert_array_equal(g.kept[0][layer, :P], same.numpy(), err_msg=f"{plan} layer {layer}")
    assert g.kept[0][:, P].all()  # the last token is computed on top of the splice, never overwritten


def test_survival_in_a_left_padded_batch_equals_each_prompt_alone(stories):
    targets = [STORY, SHORT, LONG, PROMPT, STORY2]
    sources = [LONG, PROMPT, STORY, STORY2, SHORT]
    plans = ["kv:all", "kv:middle", "kv:all:insert:w3", "v_proj@2:w4:prompt + kv:1-3", "kv:all:splicefirst"]
    g = _gen(stories, targets, sources, plans)
    for i in range(len(targets)):
        alone = _gen(stories, [targets[i]], [sources[i]], plans[i])
        np.testing.assert_array_equal(g.kept[i], alone.kept[0])
        assert g.token_ids[i] == alone.token_ids[0], plans[i]
        assert g.target_kept()[0][i] == alone.target_kept()[0][0]


def test_seed_flavour_splice_overwrites_the_last_min_t_s_slots(stories):
    T, S = len(_ids(stories, LONG)), len(_ids(stories, PROMPT))
    g = _gen(stories, [LONG, PROMPT], [PROMPT, LONG], "kv:all", flavour="seed")
    for kept, (t, s) in zip(g.kept, ((T, S), (S, T))):
        want = np.ones((stories.n_layers, t), dtype=bool)
        want[:, t - min(t, s) :] = False  # the seed's rule: whole prompts, first slot included
        np.testing.assert_array_equal(kept, want)
    assert g.target_kept()[0][1] == 0.0  # the shorter target: erased (its BOS is not message)


# --------------------------------------------------------------------------- layer bands and ranges


def test_layer_bands_are_thirds_of_the_depth():
    def band(name, n):
        return splice_layers(KVSplice(layers=name), n)

    assert band("early", 30) == list(range(10)) and band("middle", 30) == list(range(10, 20))
    assert band("late", 30) == list(range(20, 30))
    assert (band("early", 5), band("middle", 5), band("late", 5)) == ([0, 1], [2, 3], [4])
    assert sorted(band("early", 7) + band("middle", 7) + band("late", 7)) == list(range(7))
    with pytest.raises(InterventionError, match="no early third"):
        band("early", 0)


def test_plan_text_for_bands_ranges_and_insert_round_trips():
    for text, want in [
        ("kv:early", KVSplice(layers="early")),
        ("kv:4-7", KVSplice(layers=(4, 5, 6))),
        ("kv:all:insert", KVSplice(align="insert")),
        ("kv:all:insert:w3:keep", KVSplice(align="insert", window=3, rope="keep")),
        ("kv:late:w2", KVSplice(layers="late", window=2)),
    ]:
        (got,) = parse_plan(text)
        assert got == want
        assert parse_plan(got.describe()).interventions == (got,)
    for bad, match in [
        ("kv:5-5", "empty"),
        ("kv:early:insert", "needs layers='all'"),
        ("kv:all:insert:splicefirst", "first='splice'"),
        ("kv:all:insert + kv:all", "cannot be combined"),
    ]:
        with pytest.raises(InterventionError, match=match):
            parse_plan(bad)
    with pytest.raises(InterventionError, match="band"):
        KVSplice(layers="middle_ish")


# --------------------------------------------------------------------------- insert


def _insert_reference(model, ti, si, tgt_span, src_span, window=None, reposition=True):
    """The cache an insert should hand the model, from plain HF forwards at the landing positions."""
    P, S = len(ti) - 1, len(si) - 1
    m0 = min(tgt_span[0], P)
    s1 = min(src_span[1], S)
    s0 = src_span[0] if window is None else max(src_span[0], s1 - window)
    n = s1 - s0
    head = prompt_cache(model.hf, ti[:-1])
    moved = prompt_cache(model.hf, ti[:-1], n if reposition else 0)
    src = prompt_cache(model.hf, si[:-1], (m0 - s0) if reposition else 0)
    layers = []
    for layer in range(model.n_layers):
        k = torch.cat([head[layer][0][:, :, :m0], src[layer][0][:, :, s0:s1], moved[layer][0][:, :, m0:]], 2)
        v = torch.cat([head[layer][1][:, :, :m0], src[layer][1][:, :, s0:s1], moved[layer][1][:, :, m0:]], 2)
        layers.append((k, v))
    return layers, n, P


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3", "stories260K"])
@pytest.mark.parametrize(
    "tgt_span,src_span,window,rope",
    [
        (None, None, None, "reposition"),  # raw: after BOS, source message up to its prefix's end
        ((3, 9), (2, 6), None, "reposition"),  # a template head of 3 tokens; source message 2..5
        ((3, 9), (1, 9), 2, "reposition"),  # the last 2 source message slots only
        ((2, 9), (4, 8), None, "keep"),
    ],
)
def test_insert_matches_a_hand_built_cache(family, tgt_span, src_span, window, rope, tiny_models, stories):
    model = stories if family == "stories260K" else tiny_models(family)
    target, source = STORY, LONG
    ti, si = _ids(model, target), _ids(model, source)
    plan = "kv:all:insert" + (f":w{window}" if window else "") + (":keep" if rope == "keep" else "")
    kw = {}
    if tgt_span is not None:
        kw = dict(target_spans=[tgt_span], source_spans=[src_span])
    with CacheSpy(model) as spy:
        g = _gen(model, [ti], [si], plan, **kw)
    spans = (tgt_span or (1, len(ti)), src_span or (1, len(si)))
    layers, n, P = _insert_reference(model, ti, si, *spans, window=window, reposition=rope == "reposition")
    for layer in range(model.n_layers):
        _close(spy.kv[layer][0], layers[layer][0])
        _close(spy.kv[layer][1], layers[layer][1])
    assert spy.pos.tolist() == [[P + n]] and spy.mask.tolist() == [[1] * (P + n + 1)]
    assert g.token_ids[0] == greedy_on_cache(model.hf, layers, ti[-1], P + n, N_NEW)
    assert g.audit.iloc[0].positions == n and g.target_kept() == ([1.0], [1.0])


def test_insert_differs_from_prepend_in_what_it_adds(stories):
    """Prepend adds the source's whole prefix (BOS included) before the target's BOS; insert adds its message
    after the target's BOS, one slot fewer in raw format, and the target's BOS stays at position 0."""
    ti, si = _ids(stories, PROMPT), _ids(stories, STORY)
    with CacheSpy(stories) as ins:
        gi = _gen(stories, [PROMPT], [STORY], "kv:all:insert")
    with CacheSpy(stories) as pre:
        gp = _gen(stories, [PROMPT], [STORY], "kv:all:prepend")
    S = len(si) - 1
    assert gp.audit.iloc[0].positions == S and gi.audit.iloc[0].positions == S - 1
    own = prompt_cache(stories.hf, ti[:1])
    for layer in range(stories.n_layers):
        _close(ins.kv[layer][0][:, :, :1], own[layer][0])  # the target's BOS at slot 0, unmoved
        assert not torch.allclose(pre.kv[layer][0][:, :, :1], own[layer][0]) or torch.equal(
            torch.tensor(si[0]), torch.tensor(ti[0])
        )


def test_insert_in_a_left_padded_batch_equals_each_prompt_alone(tiny_models):
    model = tiny_models("llama")
    targets, sources = [PROMPT, LONG, SHORT, STORY], [STORY, None, PROMPT, SHORT]
    plans = ["kv:all:insert", None, "kv:all:insert:w2", "kv:all:insert"]
    g = _gen(model, targets, sources, plans)
    for i in range(len(targets)):
        alone = _gen(model, [targets[i]], [sources[i]], plans[i])
        assert g.token_ids[i] == alone.token_ids[0], i


def test_insert_refused_in_the_seed_flavour(stories):
    with pytest.raises(InterventionError, match="flavour='seed'"):
        _gen(stories, [PROMPT], [STORY], "kv:all:insert", flavour="seed")


def test_spans_that_do_not_fit_the_prompt_are_refused(stories):
    with pytest.raises(ValueError, match=r"target_spans\[0\]"):
        _gen(stories, [PROMPT], [STORY], "kv:all:insert", target_spans=[(2, 99)], source_spans=[(1, 3)])


# --------------------------------------------------------------------------- self-splices are exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_self_splice_writes_the_targets_own_slots_back_bitwise(dtype):
    """The self-patch control (source = target) changes nothing, in float32 and bf16, although its source is
    captured beside a much longer one (another padding, so another rounding of the same prompt)."""
    model = build_tiny("llama")
    model.hf.to(dtype)
    targets = [STORY, PROMPT, SHORT]
    longest = " ".join([STORY2] * 3)
    plans = ["kv:all", "kv:all + v_proj@1:w4:prompt", "kv:all:left + k_proj@0:prompt"]
    g = _gen(model, targets + targets + [PROMPT], [None] * 3 + targets + [longest], [""] * 3 + plans + ["kv:all"])
    audit = g.audit[g.audit.example.isin([3, 4, 5])]
    assert len(audit) == 5 and (audit.fired > 0).all()
    assert (audit.change_norm == 0.0).all(), audit[["description", "change_norm"]]
    assert g.token_ids[3:6] == g.token_ids[:3]
    assert g.target_kept()[0][3:6] == [1.0, 1.0, 1.0]  # its own keys and values, written back
    assert g.target_kept()[0][6] < 1.0  # a real source in the same batch still overwrites


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotation_by_zero_is_skipped_and_would_be_exact_anyway(dtype):
    """The other suspect of the GPU self-splice: re-rotating keys by a zero shift. It is an identity in IEEE
    arithmetic (cos 0 = 1, sin 0 = 0), and the splice skips it."""
    from transferlab.interventions.rope import rotate_keys

    keys = torch.randn(2, 3, 7, 16, dtype=torch.float32).to(dtype) * 30
    inv = 1.0 / (10000 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    assert torch.equal(rotate_keys(keys, 0, inv), keys)
    assert torch.equal(rotate_keys(keys, torch.zeros(2, 1, 1), inv), keys)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_self_splice_is_exact_on_the_gpu_graph_path_with_fused_kernels(dtype, monkeypatch):
    """The GPU path of the issue: bf16, static decode under CUDA graphs, ragged attention, fused kernels."""
    from transferlab.engine import prepare
    from transferlab.models.random import build_random

    model = build_random("mistral-7b", dtype=dtype, n_layers=4, device="cuda")
    prepare(model, fast_attention=True)
    prepare(model, fuse=True)
    tok = model.tokenizer
    rng = np.random.default_rng(0)
    vocab = int(model.hf.config.vocab_size)
    targets = [[tok.bos_token_id or 1] + rng.integers(10, vocab, size=n).tolist() for n in (40, 23, 57, 31)]
    longest = [tok.bos_token_id or 1] + rng.integers(10, vocab, size=300).tolist()
    n = len(targets)
    for how in ("auto", "eager"):
        monkeypatch.setenv("TRANSFERLAB_DECODE", how)
        g = generate(
            model,
            targets * 2 + [targets[0]],
            sources=[None] * n + targets + [longest],
            plan=[""] * n + ["kv:all + v_proj@0.75:w16:prompt"] * n + ["kv:all"],
            greedy=True,
            max_new_tokens=24,
            stop_at_eos=False,
        )
        audit = g.audit[g.audit.example.isin(range(n, 2 * n))]
        assert (audit.change_norm == 0.0).all(), (how, audit.change_norm.tolist())
        assert g.token_ids[n : 2 * n] == g.token_ids[:n], (how, g.decode_paths)


# --------------------------------------------------------------------------- the report


def test_report_shows_survival_per_condition_and_warns_first_in_bold(tmp_path):
    from test_report import FAST, synthetic_results

    from transferlab.report import build_summary, write_report

    df = synthetic_results(seeds=(0,), conditions=("baseline", "transfer", "kv_only"))
    assert build_summary(df, ["seed_v1"], **FAST)["survival"] == []  # a table from before the columns
    kept = {"baseline": 1.0, "transfer": 0.0, "kv_only": 0.6}
    df["target_kept"] = df.condition.map(kept)
    df["target_kept_any"] = df.condition.map({"baseline": 1.0, "transfer": 0.25, "kv_only": 1.0})
    df.loc[(df.condition == "kv_only") & (df.pair_id < 10), "target_kept"] = 0.1  # 10 rows below half
    s = build_summary(df, ["seed_v1"], **FAST)
    table = {r["condition"]: r for r in s["survival"]}
    n = int((df.condition == "kv_only").sum())
    want_kv = (0.1 * 10 + 0.6 * (n - 10)) / n
    assert table["kv_only"]["target_kept"] == pytest.approx(want_kv) and table["kv_only"]["below_half"] == 10
    assert table["kv_only"]["target_kept_min"] == pytest.approx(0.1)
    assert table["transfer"]["target_kept"] == 0.0 and table["transfer"]["target_kept_any"] == 0.25
    erased = [w for w in s["warnings"] if w["kind"] == "target_erased"]
    assert [w["condition"] for w in erased] == ["transfer"]  # kv_only keeps more than half on average
    text = write_report(tmp_path, df, s).read_text()
    warnings = text.split("## Warnings")[1].split("## Run")[0]
    first = [line for line in warnings.splitlines() if line.startswith("- ")][0]
    assert first.startswith("- **WARNING: condition transfer leaves less than half of the targets' message")
    assert first.endswith("**")
    section = text.split("## Target survival")[1].split("\n## ")[0]
    cells = {
        line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| condition")
    }
    assert cells["kv_only"] == [f"{want_kv:.3f}", "0.100", "1.000", f"10/{n}"]
    assert cells["transfer"] == ["0", "0", "0.250", f"{n}/{n}"]


def test_transfer_command_prints_survival_and_warns_below_half():
    from helpers import flat
    from typer.testing import CliRunner

    from transferlab.cli import app

    runner = CliRunner()
    args = ["transfer", "-s", STORY, "-t", PROMPT, "-n", "3", "--greedy", "--format", "raw"]
    out = runner.invoke(app, args + ["-p", "kv:all"])
    assert out.exit_code == 0, out.output
    text = flat(out.output)
    assert "target survival: target_kept 0.11 " in text  # 1 of the 9 message tokens (its last) survives
    assert "WARNING: the plan leaves less than half of the target's message in place" in text
    out = runner.invoke(app, args + ["-p", "kv:all:insert"])
    text = flat(out.output)
    assert "target_kept 1.00" in text and "target_kept_any 1.00" in text and "less than half" not in text


def test_an_empty_message_has_an_empty_span_and_no_survival_share(stories):
    (span,) = message_spans(stories.tokenizer, [""])
    assert span == (1, 1)  # after BOS, nothing
    g = _gen(stories, [""], [STORY], "kv:all:insert")
    assert all(np.isnan(x[0]) for x in g.target_kept())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_self_patch_decode_value_is_the_targets_own_last_token_value(dtype):
    """``v_proj@L:both`` with the target as source writes, at every new token, the target's own last prompt
    token value from its own forward: the new tokens' cached values at L are bitwise copies of the last prompt
    token's, although its source was captured beside a much longer foreign one (another batch shape)."""
    model = build_tiny("llama")
    model.hf.to(dtype)
    caches = []

    def spy(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            caches.append(cache)

    h = model.hf.register_forward_pre_hook(spy, with_kwargs=True)
    try:  # rows are sorted by target length: the self row (the longer target) is the batch's last
        g = _gen(model, [STORY, PROMPT], [STORY, " ".join([STORY2] * 3)], ["kv:all + v_proj@1:w4:both", "kv:all"])
    finally:
        h.remove()
    fed = N_NEW - 1  # new tokens fed back (the last one sampled is never fed)
    v = caches[-1].layers[1].values[-1]  # [H, slots, hd] of the self row, after the last decode step
    last = v[:, -fed - 1]
    assert all(torch.equal(v[:, -fed + j], last) for j in range(fed))
    assert not torch.equal(caches[-1].layers[0].values[-1][:, -1], caches[-1].layers[0].values[-1][:, -fed - 1])
    assert g.audit[g.audit.example == 0].change_norm.tolist()[0] == 0.0  # the self-splice wrote its own slots
