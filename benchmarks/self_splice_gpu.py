"""Why a self-splice changed the cache on the GPU in bf16, and that it no longer does (issue 21 item 5).

A random model of Mistral-7B's width (4 layers, float32 and bf16) with fast
attention and fused kernels (Liger where installed, else ``torch.compile``).
Six targets, each alone (baseline) and under ``kv:all`` with itself as the
source (the self-patch control's splice), greedy, 32 tokens, on the CUDA-graph
path and the eager loop; with and without a much longer seventh source in the
batch (so the sources' capture forward is padded to another width). Two
suspects are measured:

- the source capture in another batch shape: the old engine read a self row's
  source slots from the capture (``--old`` replays it: every row is treated as
  having a foreign source);
- the RoPE re-rotation by a zero shift: ``rotate_keys(k, 0)`` against ``k``.

Prints, per case, the splice's audited change norm per row and how many
greedy continuations equal the baseline's.

    python benchmarks/self_splice_gpu.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from transferlab.engine import prepare  # noqa: E402
from transferlab.engine import rows as batch_rows  # noqa: E402
from transferlab.engine.generation import generate  # noqa: E402
from transferlab.interventions.rope import rotate_keys  # noqa: E402
from transferlab.models.random import build_random  # noqa: E402


def main() -> None:
    own = batch_rows.BatchRows.self_source
    for dtype in (torch.float32, torch.bfloat16):
        m = build_random("mistral-7b", dtype=dtype, n_layers=4, device="cuda")
        prepare(m, fast_attention=True)
        prepare(m, fuse=True)
        print(dtype, "kernels", m.source.get("kernels"), m.source.get("fused"))
        k = (torch.randn(4, 8, 50, 128, device="cuda") * 20).to(dtype)
        inv = 1.0 / (1e6 ** (torch.arange(0, 128, 2, dtype=torch.float32, device="cuda") / 128))
        print("  rotate_keys by 0 is the identity:", torch.equal(rotate_keys(k, 0, inv), k))
        rng = np.random.default_rng(0)
        targets = [[1] + rng.integers(10, 30000, size=n).tolist() for n in (40, 23, 57, 31, 200, 120)]
        longest = [1] + rng.integers(10, 30000, size=300).tolist()
        n = len(targets)
        for old in (True, False):
            batch_rows.BatchRows.self_source = property(lambda s: [False] * len(s.targets)) if old else own
            for how in ("auto", "eager"):
                os.environ["TRANSFERLAB_DECODE"] = how
                for extra in ([], [longest]):
                    g = generate(
                        m,
                        targets * 2 + [targets[0]] * len(extra),
                        sources=[None] * n + targets + extra,
                        plan=[""] * n + ["kv:all"] * (n + len(extra)),
                        greedy=True,
                        max_new_tokens=32,
                        stop_at_eos=False,
                    )
                    a = g.audit[g.audit.example.isin(range(n, 2 * n))]
                    same = sum(g.token_ids[i] == g.token_ids[n + i] for i in range(n))
                    print(
                        f"  {'old (source from the capture)' if old else 'now (source from the target)'} "
                        f"decode={how} longer source in batch={bool(extra)}: change norms "
                        f"{[round(x, 3) for x in a.change_norm]}, identical sequences {same}/{n}, "
                        f"paths {sorted(set(g.decode_paths))}"
                    )
        batch_rows.BatchRows.self_source = own


if __name__ == "__main__":
    main()
