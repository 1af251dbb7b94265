"""The W300 speed benchmark (issue 6): our engine vs the seed's loop vs HF ``generate``.

W300 = 300 (source, target) pairs x 4 conditions (baseline; transfer = all-layer
KV splice + v_proj patch at layer 27 on every decode step; norm-matched noise
at layer 27; wrong layer = the transfer's patch at layer 5) x 150 new tokens
(EOS ignored, so the work is fixed), sources 60-120 tokens, targets 8-40
tokens, sampling at T=0.8, corrected flavour. Prompts are random token ids:
the model is randomly initialised with Mistral-7B-Instruct-v0.2's shape and
built on the device (speed does not depend on weight values).

In one process it measures: (a) our engine end to end (source capture +
splice + generation) over all 1,200 generations; (b) the seed's loop (batch
1, token by token, a DynamicCache splice and a v_proj hook) on a subsample,
projected to the workload; (c) HF ``generate`` without interventions at the
same batch size. It reports wall time, generated tokens/s, peak GPU memory,
the GPU's name and the ratios, and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import os
import time

import torch

from .bench_results import write_result
from .engine import prepare
from .engine.batching import left_pad
from .engine.decode import mode as decode_mode
from .engine.sizing import auto_batch_size, tokens_per_example
from .experiments.w300 import W300_CONDITIONS, make_workload
from .models.cache import cache_kwargs, get_kv, output_cache
from .models.random import build_random


def _decode_mode(device) -> str:
    how = decode_mode()
    return ("graph" if device.type == "cuda" else "eager") if how == "auto" else how


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(model, sources, targets, max_new_tokens=150, batch_size=None, conditions=None):
    conditions = conditions or W300_CONDITIONS
    tg, sr, pl, ids = [], [], [], []
    for name, plan in conditions.items():
        for i, (s, t) in enumerate(zip(sources, targets)):
            tg.append(t)
            sr.append(s if plan else None)
            pl.append(plan)
            ids.append(f"{name}|{i}")
    _sync(model.device)
    t0 = time.perf_counter()
    gen = model.generate(
        tg,
        sources=sr,
        plan=pl,
        max_new_tokens=max_new_tokens,
        temperature=0.8,
        stop_at_eos=False,
        batch_size=batch_size,
        example_ids=ids,
        prompt_format="raw",  # the seed's W300 workload: plain text
    )
    _sync(model.device)
    wall = time.perf_counter() - t0
    n_tokens = sum(len(t) for t in gen.token_ids)
    return {
        "wall_s": wall,
        "generations": len(tg),
        "tokens": n_tokens,
        "tokens_per_s": n_tokens / wall,
        "never_fired": int(gen.audit.never_fired.sum()) if len(gen.audit) else 0,
    }


def seed_loop_one(model, source, target, layer=27, max_new_tokens=150, window=16):
    """The seed's Quick Start loop for one pair (batch 1, token by token)."""
    from transformers import DynamicCache

    hf = model.hf
    dev = model.device
    src = torch.tensor([source], device=dev)
    tgt = torch.tensor([target], device=dev)
    with torch.no_grad():
        src_out = hf(src, use_cache=True)
        src_kv = output_cache(src_out)
        store = []
        h = model.adapter.layers[layer].self_attn.v_proj.register_forward_hook(lambda m, i, o: store.append(o.detach()))
        hf(src)
        h.remove()
        champion_v = store[0]
        base_kv = output_cache(hf(tgt, use_cache=True))
        patched = DynamicCache()
        for li in range(model.n_layers):
            ks, vs = get_kv(src_kv, li)
            kb, vb = get_kv(base_kv, li)
            n = min(kb.shape[2], ks.shape[2])
            kp, vp = kb.clone(), vb.clone()
            kp[:, :, -n:], vp[:, :, -n:] = ks[:, :, -n:], vs[:, :, -n:]
            patched.update(kp, vp, li)

        def v_hook(m, i, o):
            p = o.clone()
            if min(p.shape[1], champion_v.shape[1]) >= window:
                p[:, -window:, :] = champion_v[:, -window:, :].to(p.dtype)
            return p

        h = model.adapter.layers[layer].self_attn.v_proj.register_forward_hook(v_hook)
        try:
            ids = tgt.clone()
            cache = patched
            for _ in range(max_new_tokens):
                out = hf(ids[:, -1:], use_cache=True, **cache_kwargs(hf, cache))
                probs = torch.softmax(out.logits[:, -1, :].float() / 0.8, dim=-1)
                nxt = torch.multinomial(probs, 1)
                ids = torch.cat([ids, nxt], dim=1)
                cache = output_cache(out)
        finally:
            h.remove()
    return ids.shape[1] - tgt.shape[1]


def run_seed_loop(model, sources, targets, n_sample=3, max_new_tokens=150, total_generations=1200):
    seed_loop_one(model, sources[0], targets[0], max_new_tokens=4)  # warm-up
    _sync(model.device)
    t0 = time.perf_counter()
    toks = sum(
        seed_loop_one(model, s, t, max_new_tokens=max_new_tokens)
        for s, t in zip(sources[:n_sample], targets[:n_sample])
    )
    _sync(model.device)
    wall = time.perf_counter() - t0
    per_gen = wall / n_sample
    return {
        "sampled_generations": n_sample,
        "wall_s": wall,
        "s_per_generation": per_gen,
        "ms_per_token": 1000 * wall / toks,
        "projected_wall_s": per_gen * total_generations,
    }


def run_hf_generate(model, targets, batch_size, max_new_tokens=150, repeats=4):
    hf = model.hf
    impl = hf.config._attn_implementation
    if impl != "sdpa" and hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("sdpa")  # HF's generate as it is, with its own SDPA path
    try:
        return _hf_generate(model, targets, batch_size, max_new_tokens, repeats)
    finally:
        if impl != "sdpa" and hasattr(hf, "set_attn_implementation"):
            hf.set_attn_implementation(impl)


def _hf_generate(model, targets, batch_size, max_new_tokens, repeats):
    hf = model.hf
    seqs = sorted(targets * repeats, key=len)
    _sync(model.device)
    t0 = time.perf_counter()
    n_tok = 0
    for start in range(0, len(seqs), batch_size):
        b = left_pad(seqs[start : start + batch_size], 0, 1, device=model.device)
        out = hf.generate(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=0.8,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
        )
        n_tok += (out.shape[1] - b.input_ids.shape[1]) * out.shape[0]
    _sync(model.device)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "generations": len(seqs),
        "tokens": n_tok,
        "tokens_per_s": n_tok / wall,
        "batch_size": batch_size,
    }


def run_engine_warm(model, sources, targets, max_new_tokens, batch_size, plans=None):
    """``run_engine`` as a warm process meets it: on CUDA the same run twice, the second reported and the first
    kept as ``first_wall_s`` (it compiles the ragged decode kernel for this batch shape, :mod:`.engine.ragged`)."""
    first = (
        run_engine(model, sources, targets, max_new_tokens, batch_size, plans) if model.device.type == "cuda" else None
    )
    out = run_engine(model, sources, targets, max_new_tokens, batch_size, plans)
    out["first_wall_s"] = (first or out)["wall_s"]
    return out


def _engine_batch(model, sources, targets, max_new_tokens):
    """The batch size ``generate`` picks for the full W300 (4 conditions)."""
    n = len(targets) * len(W300_CONDITIONS)
    return auto_batch_size(model, n, tokens_per_example(targets, sources, max_new_tokens))


def main(
    shape="mistral-7b",
    n_pairs=300,
    max_new_tokens=150,
    batch_size=None,
    seed_sample=3,
    out_dir="benchmarks/results",
    skip=(),
    device=None,
    n_layers=None,
    hf_batch=None,
    variants=("plain",),
) -> dict:
    from .models.devices import resolve_device

    dev = resolve_device(device)  # DeviceError (a ValueError) for a device this machine lacks
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = prepare(build_random(shape, device=dev, dtype=dtype, n_layers=n_layers), fast_attention=dev.type == "cuda")
    build_s = time.perf_counter() - t0
    sources, targets = make_workload(n_pairs, model.hf.config.vocab_size)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result = {
        "workload": f"W{n_pairs}",
        "shape": shape,
        "n_layers": model.n_layers,
        "device": gpu,
        "attention": model.hf.config._attn_implementation,
        "dtype": str(dtype),
        "max_new_tokens": max_new_tokens,
        "build_s": build_s,
        "torch": torch.__version__,
        "decode": _decode_mode(dev),
        "decode_attention": os.environ.get("TRANSFERLAB_DECODE_ATTENTION", "auto"),  # auto: ragged on CUDA
    }
    import transformers

    result["transformers"] = transformers.__version__
    total = n_pairs * len(W300_CONDITIONS)
    if "engine" not in skip:
        # warm-up on a few pairs (kernels, allocator), then the measured run
        run_engine(model, sources[:4], targets[:4], max_new_tokens=4, batch_size=batch_size)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        batch_size = batch_size or _engine_batch(model, sources, targets, max_new_tokens)
        result["engine"] = run_engine_warm(model, sources, targets, max_new_tokens, batch_size)
        if dev.type == "cuda":
            result["engine"]["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        if "unpatched" not in skip:
            # the same 1,200 generations and batch size with every plan empty: the cost of interventions
            plain = {name: "" for name in W300_CONDITIONS}
            same = result["engine"]["batch_size"] = batch_size or _engine_batch(model, sources, targets, max_new_tokens)
            result["engine_unpatched"] = run_engine_warm(model, sources, targets, max_new_tokens, same, plain)
            result["engine_unpatched"]["batch_size"] = same
            result["intervention_overhead"] = result["engine"]["wall_s"] / result["engine_unpatched"]["wall_s"] - 1
        result["engine"]["batch_size"] = batch_size or _engine_batch(model, sources, targets, max_new_tokens)
    if "fused" in variants and "engine" not in skip:
        # the same measurements with RMSNorm, SiLU*up and RoPE fused (transferlab.engine.fused); compile time apart
        t1 = time.perf_counter()
        result["fused_parts"] = prepare(model, fuse=True).source["fused"]
        result["kernels"] = model.source.get("kernels")
        run_engine(model, sources[:4], targets[:4], max_new_tokens=4, batch_size=batch_size)
        run_engine(model, sources[:8], targets[:8], max_new_tokens=4, batch_size=32)
        result["fuse_compile_s"] = time.perf_counter() - t1
        result["engine_fused"] = run_engine_warm(model, sources, targets, max_new_tokens, batch_size)
        if "unpatched" not in skip:
            plain = {name: "" for name in W300_CONDITIONS}
            result["engine_fused_unpatched"] = run_engine_warm(
                model, sources, targets, max_new_tokens, batch_size, plain
            )
            result["fused_intervention_overhead"] = (
                result["engine_fused"]["wall_s"] / result["engine_fused_unpatched"]["wall_s"] - 1
            )
    if "seed" not in skip:
        result["seed_loop"] = run_seed_loop(model, sources, targets, seed_sample, max_new_tokens, total)
    if "hf" not in skip:
        bs = hf_batch or result.get("engine", {}).get("batch_size") or batch_size or 256
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        result["hf_generate"] = run_hf_generate(model, targets, min(bs, total), max_new_tokens, len(W300_CONDITIONS))
        if dev.type == "cuda":
            result["hf_generate"]["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    if "engine" in result and "seed_loop" in result:
        result["speedup_vs_seed_loop"] = result["seed_loop"]["projected_wall_s"] / result["engine"]["wall_s"]
    if "engine" in result and "hf_generate" in result:
        result["engine_over_hf_generate"] = result["engine"]["wall_s"] / result["hf_generate"]["wall_s"]
    path = write_result(result, out_dir, f"w{n_pairs}", shape, gpu)
    result["path"] = str(path)
    return result
