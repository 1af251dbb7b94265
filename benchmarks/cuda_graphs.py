"""One CUDA graph of a function, recorded the way PyTorch asks: a warm-up call on a side stream, then the capture.

Shared by the benchmarks that replay a workload under a graph (``decode_attention.py``, ``gemm_floor.py``). The
engine's own capture (``transferlab.engine.decode``) adds its stage clock and a fallback when capture fails.
"""

from __future__ import annotations

import torch


def capture(fn):
    """``(graph, what fn returned while recorded)``: replaying ``graph`` reruns ``fn``'s kernels on its memory."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
