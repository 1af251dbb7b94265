"""What the ragged decode attention costs a fresh process before its first step (issue 12).

    python benchmarks/ragged_compile.py [--as-run]   # run it 2-3 times: the first fills the compile caches

FlexAttention is compiled (Dynamo + Inductor -> Triton) once per process and
batch shape (:mod:`transferlab.engine.ragged`). In a new process this prints:
importing torch and transformers; importing Dynamo and Inductor (what the
first compile imports); the first compile at W300's decode shape (1,200 rows,
288 slots, Mistral-7B's heads); the same call again (compiled: no cost); a
second shape (64 rows, 192 slots). ``--as-run`` first imports what
``transferlab run`` has imported by then (the engine, Mistral's modeling
code, liger-kernel), so the Dynamo and Inductor import is what is left of it
in a run.
"""

import sys
import time
from pathlib import Path

t0 = time.perf_counter()
import torch  # noqa: E402
import transformers  # noqa: E402, F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
if "--as-run" in sys.argv:
    import transformers.models.mistral.modeling_mistral  # noqa: E402, F401

    import transferlab.engine  # noqa: E402, F401
    from transferlab.engine import liger  # noqa: E402

    liger.available()  # imports liger-kernel's ops (and Triton)
t1 = time.perf_counter()
import torch._dynamo  # noqa: E402, F401
import torch._inductor.compile_fx  # noqa: E402, F401

t2 = time.perf_counter()
from transferlab.engine import ragged  # noqa: E402


def once(batch: int, slots: int) -> float:
    """Seconds for one ragged attention call at this shape (a compile, the first time)."""
    mask = torch.ones(batch, slots, dtype=torch.bool, device="cuda")
    blocks = ragged.RaggedBlocks(mask, torch.tensor(slots - 1, device="cuda"))
    q = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(batch, 8, slots, 128, device="cuda", dtype=torch.bfloat16)
    start = time.perf_counter()
    ragged.attend(q, kv, kv, blocks.block_mask, 128**-0.5)
    torch.cuda.synchronize()
    return time.perf_counter() - start


first, again, other = once(1200, 288), once(1200, 288), once(64, 192)
print(
    f"{torch.cuda.get_device_name()}: import torch+transformers{' and the run' if '--as-run' in sys.argv else ''} "
    f"{t1 - t0:.2f} s, Dynamo+Inductor {t2 - t1:.2f} s; "
    f"first compile {first:.2f} s, same shape again {again:.3f} s, a new shape {other:.2f} s"
)
