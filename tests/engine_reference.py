"""Independent references for the engine tests: plain ``transformers`` + ``torch`` only.

Nothing here imports ``transferlab``: these functions restate, from the seed
write-up and from Hugging Face's own API, what the engine is supposed to do,
so that the tests compare two independent implementations.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from transformers.cache_utils import DynamicCache

# --------------------------------------------------------------------------- HF plumbing


def cache_kw(hf, cache) -> dict:
    """The forward keyword for a cache in this transformers release."""
    params = inspect.signature(hf.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def out_cache(out):
    for name in ("cache", "past_key_values"):
        if name in out.keys():
            return out[name]
    return None


def layer_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    lay = cache.layers[layer]
    return lay.keys, lay.values


def n_layers_of(hf) -> int:
    return len(hf.model.layers)


def proj_module(hf, layer: int, site: str):
    """(module, column slice or None) of q/k/v_proj at ``layer``, from the HF config alone."""
    cfg = hf.config
    attn = hf.model.layers[layer].self_attn
    if hasattr(attn, "qkv_proj"):  # phi3: fused q|k|v
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        q = cfg.num_attention_heads * hd
        kv = cfg.num_key_value_heads * hd
        sl = {"q_proj": slice(0, q), "k_proj": slice(q, q + kv), "v_proj": slice(q + kv, q + 2 * kv)}[site]
        return attn.qkv_proj, sl
    return getattr(attn, site), None


@contextlib.contextmanager
def forward_hook(module, fn):
    h = module.register_forward_hook(fn)
    try:
        yield
    finally:
        h.remove()


# --------------------------------------------------------------------------- the seed's Quick Start


@torch.no_grad()
def seed_quickstart(
    hf,
    target_ids: list[int],
    source_ids: list[int],
    layer: int,
    n_new: int,
    window: int = 16,
    v_hook_at_prefill: bool = False,
) -> dict:
    """The seed write-up's "Quick Start: Minimal Reproduction" loop, greedy instead of multinomial.

    Returns ``{"tokens": new ids, "v_fired": calls in which the seed's v_hook wrote,
    "fed": the ids fed at each decode call}``. ``v_hook_at_prefill`` also
    registers the seed's v_hook while the baseline (target) prompt is
    processed, which the seed did not do; it is how a ``phase="prompt"``
    patch in the seed flavour is defined.
    """
    module, sl = proj_module(hf, layer, "v_proj")

    def v_out(o):
        return o if sl is None else o[..., sl]

    # Extract activations (champion = source)
    champion_inputs = torch.tensor([source_ids])
    champion_outputs = hf(input_ids=champion_inputs, use_cache=True)
    champion_kv = out_cache(champion_outputs)
    v_storage = []
    with forward_hook(module, lambda m, i, o: v_storage.append(v_out(o).detach())):
        hf(input_ids=champion_inputs)
    champion_v = v_storage[0]

    fired = [0]

    def v_hook(module, input, output):
        patched = output.clone()
        view = v_out(patched)
        L = min(view.shape[1], champion_v.shape[1])
        if L >= window:
            view[:, -window:, :] = champion_v[:, -window:, :].to(view.dtype)
            fired[0] += 1
        return patched

    # Generate with transfer (baseline = target)
    baseline_inputs = torch.tensor([target_ids])
    if v_hook_at_prefill:
        with forward_hook(module, v_hook):
            baseline_outputs = hf(input_ids=baseline_inputs, use_cache=True)
    else:
        baseline_outputs = hf(input_ids=baseline_inputs, use_cache=True)
    baseline_kv = out_cache(baseline_outputs)

    # Replace ALL layers with champion KV
    patched_kv = DynamicCache()
    for layer_idx in range(len(champion_kv.layers)):
        k_src, v_src = layer_kv(champion_kv, layer_idx)
        k_base, v_base = layer_kv(baseline_kv, layer_idx)
        min_seq = min(k_base.shape[2], k_src.shape[2])
        k_patched = k_base.clone()
        v_patched = v_base.clone()
        k_patched[:, :, -min_seq:, :] = k_src[:, :, -min_seq:, :]
        v_patched[:, :, -min_seq:, :] = v_src[:, :, -min_seq:, :]
        patched_kv.update(k_patched, v_patched, layer_idx)

    fed = []
    h = module.register_forward_hook(v_hook)
    try:
        generated_ids = baseline_inputs.clone()
        current_kv = patched_kv
        for _ in range(n_new):
            step_ids = generated_ids[:, -1:]
            fed.append(int(step_ids[0, 0]))
            outputs = hf(input_ids=step_ids, use_cache=True, **cache_kw(hf, current_kv))
            next_token = outputs.logits[:, -1, :].argmax(-1, keepdim=True)
            generated_ids = torch.cat([generated_ids, next_token], dim=1)
            current_kv = out_cache(outputs)
    finally:
        h.remove()
    return {"tokens": generated_ids[0, len(target_ids) :].tolist(), "v_fired": fired[0], "fed": fed}


@torch.no_grad()
def greedy_plain(hf, ids: list[int], n_new: int) -> list[int]:
    """Greedy continuation with a plain HF cache loop (no interventions)."""
    out = hf(input_ids=torch.tensor([ids]), use_cache=True)
    cache = out_cache(out)
    tokens = []
    for _ in range(n_new):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(nxt))
        out = hf(input_ids=nxt, use_cache=True, **cache_kw(hf, cache))
        cache = out_cache(out)
    return tokens


@torch.no_grad()
def prompt_cache(hf, ids: list[int], position_offset: int = 0):
    """Per-layer (keys, values) of one unpadded forward, positions shifted by ``position_offset``."""
    x = torch.tensor([ids])
    pos = torch.arange(len(ids))[None] + position_offset
    out = hf(input_ids=x, position_ids=pos, use_cache=True)
    cache = out_cache(out)
    return [tuple(t.clone() for t in layer_kv(cache, i)) for i in range(len(cache.layers))]


# --------------------------------------------------------------------------- sampling


def filtered_probs_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering, row by row in plain Python order (HF warper semantics)."""
    out = torch.zeros_like(logits, dtype=torch.float64)
    for r in range(logits.shape[0]):
        z = logits[r].double() / temperature
        if top_k and top_k < len(z):
            kth = sorted(z.tolist(), reverse=True)[top_k - 1]
            z = torch.where(z < kth, torch.tensor(float("-inf"), dtype=z.dtype), z)
        p = torch.softmax(z, -1)
        if top_p < 1.0:
            order = sorted(range(len(p)), key=lambda i: -float(p[i]))
            keep, acc = set(), 0.0
            for i in order:
                keep.add(i)
                acc += float(p[i])
                if acc >= top_p:
                    break
            mask = torch.tensor([i in keep for i in range(len(p))])
            p = torch.where(mask, p, torch.zeros_like(p))
            p = p / p.sum()
        out[r] = p
    return out


@torch.no_grad()
def greedy_on_cache(hf, layers_kv, last_token: int, position: int, n_new: int) -> list[int]:
    """Greedy continuation from a hand-built cache: feed ``last_token`` at ``position``, then new tokens."""
    cache = DynamicCache()
    for i, (k, v) in enumerate(layers_kv):
        cache.update(k.clone(), v.clone(), i)
    tokens = []
    nxt = torch.tensor([[last_token]])
    for step in range(n_new):
        out = hf(input_ids=nxt, position_ids=torch.tensor([[position + step]]), use_cache=True, **cache_kw(hf, cache))
        cache = out_cache(out)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(nxt))
    return tokens
