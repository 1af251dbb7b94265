"""Which kernel should attend at a W300 decode step? One layer's attention, timed under CUDA graphs.

    python benchmarks/decode_attention.py [--batch 1200] [--reps 20]

The W300 batch at decode: 1,200 rows, Mistral-7B's heads (32 query heads
over 8 key/value heads, head size 128, bf16), a cache left-padded to the
longest prompt (121 slots: spliced rows hold a 61-121-token source, the
others an 8-40-token target) plus the tokens decoded so far. Every variant
gets the same query, keys, values and per-row valid slots, and its output is
compared with the memory-efficient SDPA kernel the engine uses now:

* ``efficient``: PyTorch SDPA, memory-efficient kernel, boolean mask over all slots
  (query heads of a group folded into the query axis, as ``transferlab_sdpa`` does);
* ``cudnn``: the same call on cuDNN's kernel;
* ``chunked``: rows sorted by length, ``efficient`` per chunk of rows over the
  slots that chunk uses (the left padding of short rows is not read);
* ``flex``: FlexAttention (compiled), a block mask that skips blocks of padding
  and of slots not yet written, grouped-query attention in the kernel;
* ``varlen``: FlashAttention-2 as PyTorch ships it (``_flash_attention_forward``,
  precompiled: nothing to compile per process), reading the padded
  ``[B, H, slots, d]`` cache in place through a strided view: each row's keys
  start at its first real slot (``cu_seq_k``) and run for its real slots
  (``seqused_k``); ``varlen_fold`` lays a group's query heads out as query
  positions of one key/value head, so a key block is read once per group.

Each is captured once as a CUDA graph and replayed (a decode step is replayed
that way), so launch cost is left out. Milliseconds per call x 32 layers is
the attention's share of a step. Writes JSON to benchmarks/results/.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transferlab.bench_results import write_result  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_graphs import capture  # noqa: E402

PAD = 121  # prompt slots after left padding (the longest spliced source, 120 tokens, + the target's last token)


def workload(batch: int, step: int, device, dtype=torch.bfloat16, seed=0):
    """Query, keys, values over ``PAD + step + 1`` slots, and each row's first real slot (sorted ascending
    by length: the order rows would have once sorted by cache length)."""
    g = torch.Generator().manual_seed(seed)
    half = batch // 2
    lengths = torch.cat(
        [torch.randint(8, 41, (half,), generator=g), torch.randint(62, 122, (batch - half,), generator=g)]
    )
    lengths = lengths.sort().values
    span = PAD + step + 1
    q = torch.randn(batch, 32, 1, 128, generator=g).to(device, dtype)
    k = torch.randn(batch, 8, span, 128, generator=g).to(device, dtype)
    v = torch.randn(batch, 8, span, 128, generator=g).to(device, dtype)
    start = (PAD - lengths).to(device)
    return q, k, v, start, span


def valid_mask(start, span):
    idx = torch.arange(span, device=start.device)
    return idx[None, :] >= start[:, None]  # [B, span]; every slot after the prompt is written (step's span)


def efficient(q, k, v, mask, backend=SDPBackend.EFFICIENT_ATTENTION):
    B, Hq, _, d = q.shape
    Hkv = k.shape[1]
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(q.reshape(B, Hkv, Hq // Hkv, d), k, v, attn_mask=mask[:, None, None, :])
    return out.reshape(B, Hq, 1, d)


def chunked(q, k, v, mask, starts, bounds):
    outs = []
    for (r0, r1), s in zip(bounds, starts):
        outs.append(efficient(q[r0:r1], k[r0:r1, :, s:], v[r0:r1, :, s:], mask[r0:r1, s:]))
    return torch.cat(outs)


def chunk_plan(start, n_chunks):
    B = start.shape[0]
    edges = [round(i * B / n_chunks) for i in range(n_chunks + 1)]
    bounds = list(zip(edges[:-1], edges[1:]))
    host = start.tolist()
    return bounds, [min(host[r0:r1]) for r0, r1 in bounds]


def graph_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    graph, out = capture(fn)
    graph.replay()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(reps):
        graph.replay()
    t1.record()
    torch.cuda.synchronize()
    return t0.elapsed_time(t1) / reps, out


def flex_variant(q, k, v, start, span, kv_block, compiled):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx >= start[b]

    bm = create_block_mask(mask_mod, q.shape[0], None, 1, span, device=q.device, BLOCK_SIZE=(128, kv_block))
    opts = {"BLOCK_N": kv_block} if kv_block < 64 else None

    def fn():
        return compiled(q, k, v, block_mask=bm, enable_gqa=True, kernel_options=opts)

    return fn


def varlen_variant(q, k, v, start, span, fold=False):
    """FlashAttention-2 varlen over the padded cache in place (see module docstring)."""
    B, Hq, _, d = q.shape
    H = k.shape[1]
    G = Hq // H
    rows = torch.arange(B + 1, device=q.device, dtype=torch.int32)
    first = torch.cat([start, start.new_zeros(1)]).to(torch.int32)
    cu_k = rows * (H * span) + first  # row b's keys begin at element offset (b*H*span + start_b) * d
    cu_k[-1] = (B - 1) * H * span + span
    used = (span - start).to(torch.int32)
    total = (B - 1) * H * span + span
    kv = [t.as_strided((total, H, d), (d, span * d, 1)) for t in (k, v)]
    qs = (rows * G).to(torch.int32) if fold else rows

    def fn():
        query = q.view(B, H, G, d).transpose(1, 2).reshape(B * G, H, d) if fold else q.view(B, Hq, d)
        out = torch.ops.aten._flash_attention_forward(
            query, kv[0], kv[1], qs, cu_k, G if fold else 1, span, 0.0, False, False, seqused_k=used
        )[0]
        if fold:
            out = out.view(B, G, H, d).transpose(1, 2)
        return out.reshape(B, Hq, 1, d)

    return fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1200)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--steps", default="8,72,148")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    a = ap.parse_args()
    dev = torch.device("cuda")
    from torch.nn.attention.flex_attention import flex_attention

    t = time.perf_counter()
    compiled = torch.compile(flex_attention, dynamic=False)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": a.batch, "rows": {}}
    for step in [int(s) for s in a.steps.split(",")]:
        q, k, v, start, span = workload(a.batch, step, dev)
        mask = valid_mask(start, span)
        real = int(mask.sum())
        ref = efficient(q, k, v, mask).float()
        row = {"span": span, "real_slots_per_row": real / a.batch, "ms_per_call": {}, "max_abs_diff": {}}

        def record(name, fn):
            if a.only and name not in a.only.split(","):
                return
            try:
                t0 = time.perf_counter()
                ms, out = graph_ms(fn, a.reps)
                row["ms_per_call"][name] = ms
                row["max_abs_diff"][name] = float((out.float() - ref).abs().max())
                print(
                    f"step {step:4d} {name:14s} {ms:7.3f} ms  x32 = {32 * ms:6.2f} ms/step  "
                    f"diff {row['max_abs_diff'][name]:.2e}  (first {time.perf_counter() - t0:.1f} s)",
                    flush=True,
                )
            except Exception as exc:  # a kernel that refuses these shapes: recorded, not fatal
                row["ms_per_call"][name] = None
                row.setdefault("errors", {})[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"step {step:4d} {name:14s} failed: {row['errors'][name]}", flush=True)

        record("efficient", lambda: efficient(q, k, v, mask))
        record("cudnn", lambda: efficient(q, k, v, mask, SDPBackend.CUDNN_ATTENTION))
        for n in (4, 8, 16):
            bounds, starts = chunk_plan(start, n)
            record(f"chunked{n}", lambda b=bounds, s=starts: chunked(q, k, v, mask, s, b))
        record("varlen", varlen_variant(q, k, v, start, span))
        record("varlen_fold", varlen_variant(q, k, v, start, span, fold=True))
        for kb in (128, 64, 32, 16):
            record(f"flex_kv{kb}", flex_variant(q, k, v, start, span, kb, compiled))
        res["rows"][str(step)] = row
    res["wall_s"] = time.perf_counter() - t
    print("wrote", write_result(res, a.out, "decode_attention", torch.cuda.get_device_name()))


if __name__ == "__main__":
    sys.exit(main())
