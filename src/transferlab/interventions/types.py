"""The intervention types: declarative, serializable edits of a forward pass.

Every intervention is a frozen dataclass that converts to and from a plain
dict (``to_dict`` / :func:`intervention_from_dict`), so plans live in TOML
configs and in result tables. Layers stay as the user wrote them (an index, a
negative index or a depth fraction) until the plan is bound to a model.

Where an intervention writes, and what it writes
------------------------------------------------
Activation interventions act on a hook point (``site@layer``) in two phases:

* ``prompt`` -- while the target prompt is processed (prefill). Positions are
  absolute prompt positions of the target; BOS is never written.

  - ``window=W``: the target's last ``W`` prompt tokens receive the source's
    last ``W`` tokens (right-aligned). ``W`` larger than the source's tokens
    is an error; a target shorter than ``W`` receives only its own length
    (the audit records how many positions were written).
  - ``fraction=f``: the first ``ceil(f * n)`` tokens of the target
    (``n`` = its tokens without BOS) receive the source's first tokens (the
    seed's "first 25% of tokens" is ``fraction=0.25``).
  - ``positions=(a, b)``: absolute positions ``a..b-1`` receive the source's
    tokens at the same positions.
  - none of these: the last ``min(n_target, n_source)`` tokens, right-aligned.

* ``decode`` -- at every newly generated token (one position per step). What
  is written there is set by ``decode``:

  - ``"last"`` (default): the source's last-token activation, the position
    from which the source itself would predict its next token;
  - ``"mean"``: the mean of the source's window (or of all its tokens);
  - ``"cycle"``: step k receives the window's row ``k mod W``, walking the
    source's last W tokens in order;
  - ``"lockstep"``: the source generates alongside the target (same sampler,
    same random stream, no interventions) and new token k receives the
    source's activation at its own new token k. A prompt patched into itself
    in lockstep is the identity, at every phase.

``mode`` says how the source value ``s`` meets the activation ``x``:
``replace`` (``x <- s``), ``add`` (``x <- x + alpha * s``) or ``mix``
(``x <- (1 - alpha) * x + alpha * s``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..sites import ACTIVATION_SITES, HEAD_SITES, SiteError
from ..suggest import did_you_mean

PHASES = ("prompt", "decode", "both")
MODES = ("replace", "add", "mix")
DECODE_VALUES = ("last", "mean", "cycle", "lockstep")
ALIGNS = ("right", "left", "prepend", "range", "insert")
LENGTHENING = ("prepend", "insert")  # KVSplice alignments that add slots to the cache (every layer at once)
BANDS = ("early", "middle", "late")  # KVSplice layer bands: thirds of the depth
ROPES = ("reposition", "keep")
FIRSTS = ("keep", "splice")  # KVSplice.first, default first: what happens to the first slot (the attention sink)


class InterventionError(ValueError):
    """An intervention or plan that is malformed or cannot act on this model or input."""


def _check(value, allowed, name):
    if value not in allowed:
        raise InterventionError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _check_site(site: str) -> None:
    if site not in ACTIVATION_SITES:
        hint = did_you_mean(site, ACTIVATION_SITES + ("kv",))
        raise SiteError(
            f"unknown site {site!r}; {hint + ' ' if hint else ''}"
            f"(activation sites: {', '.join(ACTIVATION_SITES)}, and 'kv' for KVSplice)"
        )


def _pair(value):
    if value is None:
        return None
    if len(value) != 2 or int(value[0]) < 0 or int(value[1]) <= int(value[0]):
        raise InterventionError(f"positions must be (start, stop) with 0 <= start < stop; got {value!r}")
    return (int(value[0]), int(value[1]))


def _layers_text(layers) -> str:
    return layers if layers == "all" or layers in BANDS else ",".join(str(x) for x in layers)


def _heads_text(head_kind: str, heads) -> str:
    return ("qh" if head_kind == "query" else "h") + ",".join(map(str, heads))


def _fmt_num(x) -> str:
    return repr(x) if isinstance(x, float) else str(x)


def _patch_opts(p: "Patch", defaults: "Patch") -> list[str]:
    """Options of a patch that differ from ``defaults``, in mini-language order."""
    out = []
    if p.window is not None:
        out.append(f"w{p.window}")
    if p.fraction is not None:
        out.append(f"f{p.fraction!r}")
    if p.positions is not None:
        out.append(f"p{p.positions[0]}-{p.positions[1]}")
    if p.phase != defaults.phase:
        out.append(p.phase)
    if p.mode != defaults.mode:
        out.append(p.mode)
    if p.alpha != defaults.alpha:
        out.append(f"a{p.alpha!r}")
    if p.decode != defaults.decode:
        out.append(p.decode)
    return out


@dataclass(frozen=True)
class Intervention:
    """Base class; ``kind`` names the type in serialized form."""

    kind: ClassVar[str] = ""
    needs_source: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def describe(self) -> str:
        """The mini-language form (inverse of :func:`~transferlab.interventions.plan.parse_intervention`)."""
        raise NotImplementedError


@dataclass(frozen=True)
class KVSplice(Intervention):
    """Write the source's cached keys/values into the target's cache.

    ``align``: ``right`` (the seed's rule: the last n = min(T_target, T_source)
    slots), ``left`` (the first n slots), ``range`` (slots ``positions=(a, b)``
    of both), ``prepend`` (the whole source cache placed before the
    target's, which then follows at shifted positions), or ``insert`` (the
    source's *message* slots placed just before the target's message: the
    target keeps every slot, its template head in place, its message and what
    follows moved later; see :mod:`.splice` for how it differs from
    ``prepend``). ``window=W`` limits a right/left splice to W slots, and an
    insert to the source message's last W slots (right with ``wK`` is the
    splice of the last k source prefix tokens).

    ``layers``: ``"all"``, a band of the depth (``"early"``, ``"middle"``,
    ``"late"``: layers ``l`` with ``floor(3 l / n_layers)`` = 0, 1, 2), or a
    tuple of layers (indices, negative indices or depth fractions; the plan
    text ``A-B`` gives the indices A..B-1). ``prepend`` and ``insert`` change
    the cache's length, so they act on every layer. ``rope``: ``reposition`` re-rotates keys to
    the positions they land at (exact for rotary embeddings whose angle is
    position x frequency: default, linear, llama3, yarn); ``keep`` leaves them
    rotated for their source positions, as the seed did.

    ``first``: ``keep`` (default) leaves both prompts' first slots out of a
    right or left splice -- the target keeps its own first token (BOS, or a
    chat template's first token: the attention sink of trained models) and
    the source's first slot is not moved into a non-first position; the
    splice then covers ``min(P, S) - 1`` slots. ``splice`` lets the splice
    reach the first slot (the seed's rule: a source at least as long as the
    target overwrites it). Plan text: ``splicefirst`` (``keepfirst`` is the
    default). The seed flavour always applies the seed's rule.

    Why ``keep`` is the default: on SmolLM2-135M-Instruct (chat format, 48
    pairs, ``docs/results/first_slot/``) overwriting the first slot made short
    targets echo their source (source_overlap 0.39 against 0.24 for the
    source's own continuation) and 4/48 continuations degenerate; keeping it
    gave overlap at the source's own level (0.24 short / 0.17 long targets)
    and none degenerate.
    """

    kind: ClassVar[str] = "kv_splice"
    layers: Any = "all"
    align: str = "right"
    rope: str = "reposition"
    positions: tuple[int, int] | None = None
    window: int | None = None
    first: str = "keep"

    def __post_init__(self):
        _check(self.align, ALIGNS, "KVSplice.align")
        _check(self.rope, ROPES, "KVSplice.rope")
        _check(self.first, FIRSTS, "KVSplice.first")
        if self.first == "splice" and self.align in ("range",) + LENGTHENING:
            raise InterventionError(
                f"KVSplice.first='splice' applies to right and left splices; align={self.align!r} "
                "places its slots itself (a range names them; a prepend or insert keeps the target whole)"
            )
        if isinstance(self.layers, str) and self.layers not in ("all",) + BANDS:
            raise InterventionError(
                f"KVSplice.layers must be 'all', a band ({', '.join(BANDS)}) or a list of layers; got {self.layers!r}"
            )
        object.__setattr__(self, "positions", _pair(self.positions))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.align == "range" and self.positions is None:
            raise InterventionError("KVSplice(align='range') needs positions=(start, stop)")
        if self.align in LENGTHENING and self.layers != "all":
            raise InterventionError(
                f"KVSplice(align={self.align!r}) lengthens the cache, so it needs layers='all' "
                "(a layer band or layer list applies to right, left and range splices)"
            )
        if self.window is not None and self.window < 1:
            raise InterventionError(f"KVSplice.window must be >= 1; got {self.window}")
        if self.window is not None and self.align in ("range", "prepend"):
            raise InterventionError(
                f"KVSplice.window limits a right, left or insert splice; align={self.align!r} does not use it "
                "(give the slots with positions=(a, b) for a range)"
            )

    def describe(self) -> str:
        out = ["kv", _layers_text(self.layers)]
        if self.align == "range":
            out.append(f"p{self.positions[0]}-{self.positions[1]}")
        elif self.align != "right":
            out.append(self.align)
        if self.rope != "reposition":
            out.append(self.rope)
        if self.window is not None:
            out.append(f"w{self.window}")
        if self.first != FIRSTS[0]:
            out.append(f"{self.first}first")
        return ":".join(out)


@dataclass(frozen=True)
class Patch(Intervention):
    """Overwrite (or add to, or mix) the activation at ``site@layer`` with the source's."""

    kind: ClassVar[str] = "patch"
    site: str = "v_proj"
    layer: Any = -1
    window: int | None = None
    positions: tuple[int, int] | None = None
    fraction: float | None = None
    phase: str = "both"
    mode: str = "replace"
    alpha: float = 1.0
    decode: str = "last"

    def __post_init__(self):
        _check_site(self.site)
        _check(self.phase, PHASES, f"{type(self).__name__}.phase")
        _check(self.mode, MODES, f"{type(self).__name__}.mode")
        _check(self.decode, DECODE_VALUES, f"{type(self).__name__}.decode")
        object.__setattr__(self, "positions", _pair(self.positions))
        chosen = [n for n in ("window", "positions", "fraction") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise InterventionError(f"give at most one of window, positions, fraction; got {', '.join(chosen)}")
        if self.window is not None and self.window < 1:
            raise InterventionError(f"window must be >= 1 token; got {self.window}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise InterventionError(f"fraction must lie in (0, 1]; got {self.fraction}")
        if not math.isfinite(self.alpha):
            raise InterventionError(f"alpha must be a finite number; got {self.alpha}")

    def describe(self) -> str:
        return ":".join([f"{self.site}@{_fmt_num(self.layer)}"] + _patch_opts(self, Patch()))


@dataclass(frozen=True)
class HeadPatch(Patch):
    """A patch restricted to some attention heads of ``q_proj``, ``k_proj`` or ``v_proj``.

    ``head_kind="kv"`` (default for k/v) numbers key/value heads;
    ``head_kind="query"`` numbers query heads: on ``k_proj``/``v_proj`` a query
    head selects the key/value head its group reads (GQA: query head h reads
    kv head ``h // (n_heads // n_kv_heads)``), which every query head of that
    group shares. On ``q_proj`` and ``z`` (the heads' outputs before o_proj) heads are always query heads.
    """

    kind: ClassVar[str] = "head_patch"
    heads: tuple[int, ...] = ()
    head_kind: str = "kv"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))
        if self.site not in HEAD_SITES:
            raise InterventionError(f"HeadPatch acts on {', '.join(HEAD_SITES)}; got {self.site!r}")
        if not self.heads:
            raise InterventionError("HeadPatch needs at least one head")
        _check(self.head_kind, ("kv", "query"), "HeadPatch.head_kind")

    def describe(self) -> str:
        return ":".join(
            [f"{self.site}@{_fmt_num(self.layer)}", _heads_text(self.head_kind, self.heads)]
            + _patch_opts(self, Patch())
        )


@dataclass(frozen=True)
class Ablate(Intervention):
    """Zero, or replace by the source's mean, the activation at a hook point (optionally some heads).

    ``how="zero"`` needs no source. ``how="mean"`` writes the mean of the
    example's source activation over its tokens (BOS excluded); pass the
    target itself as source for a self-mean ablation.
    """

    kind: ClassVar[str] = "ablate"
    site: str = "v_proj"
    layer: Any = -1
    heads: tuple[int, ...] | None = None
    how: str = "zero"
    phase: str = "both"
    head_kind: str = "kv"

    def __post_init__(self):
        _check_site(self.site)
        _check(self.how, ("zero", "mean"), "Ablate.how")
        _check(self.phase, PHASES, "Ablate.phase")
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))
            if self.site not in HEAD_SITES:
                raise InterventionError(f"Ablate(heads=...) acts on {', '.join(HEAD_SITES)}; got {self.site!r}")

    @property
    def needs_source(self) -> bool:  # type: ignore[override]
        return self.how == "mean"

    def describe(self) -> str:
        out = ["ablate", f"{self.site}@{_fmt_num(self.layer)}"]
        if self.how != "zero":
            out.append(self.how)
        if self.heads is not None:
            out.append(_heads_text(self.head_kind, self.heads))
        if self.phase != "both":
            out.append(self.phase)
        return ":".join(out)


@dataclass(frozen=True)
class Noise(Patch):
    """A control: Gaussian noise in place of the source's activation.

    Positions and phases follow :class:`Patch`. With ``norm_matched=True``
    each written vector is rescaled to the norm of the source vector it stands
    in for (so the control differs from the transfer in direction only);
    otherwise it is plain ``N(0, std^2)`` noise, as in the seed's "random"
    control. The noise of an example depends only on ``seed``, the sampling
    seed passed to ``generate``, the example's id and the position, never on
    the batch.
    """

    kind: ClassVar[str] = "noise"
    norm_matched: bool = True
    seed: int = 0
    std: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.std) and self.std > 0):
            raise InterventionError(f"noise sd must be a positive number; got {self.std}")

    @property
    def needs_source(self) -> bool:  # type: ignore[override]
        return self.norm_matched

    def describe(self) -> str:
        out = ["noise", f"{self.site}@{_fmt_num(self.layer)}"]
        if not self.norm_matched:
            out.append("raw")
        if self.seed != 0:
            out.append(f"seed{self.seed}")
        if self.std != 1.0:
            out.append(f"sd{self.std!r}")
        return ":".join(out + _patch_opts(self, Noise()))


@dataclass(frozen=True)
class Steer(Intervention):
    """Add ``alpha * vector`` to the activation at a hook point (every real position but BOS, both phases).

    The vector is given inline (``vector=...``; ``site`` defaults to
    ``resid_post``, ``layer`` to -1) or read from a steering-vector file
    (``file=PATH``, :mod:`transferlab.interventions.steering`): the file names
    the site, and ``layer`` picks one of its layers (None: its only one). A
    file-form ``Steer`` holds only the reference until a :class:`~.plan.Plan`
    is built from it, which reads the file and fills ``site``, ``layer`` (an
    index), ``vector`` and ``built_on`` (the spec and fingerprint of the model
    the vector was built on, checked against the model it is used on). In the
    mini-language: ``steer:PATH[@LAYER][:aALPHA][:prompt|decode|both]``.
    ``alpha = 0`` leaves every activation bitwise unchanged (nothing is added).
    """

    kind: ClassVar[str] = "steer"
    needs_source: ClassVar[bool] = False
    site: str | None = None
    layer: Any = None
    vector: tuple[float, ...] = field(default=())
    alpha: float = 1.0
    phase: str = "both"
    file: str | None = None
    built_on: dict | None = field(default=None, compare=False, hash=False)

    def __post_init__(self):
        _check(self.phase, PHASES, "Steer.phase")
        object.__setattr__(self, "vector", tuple(float(v) for v in self.vector))
        if not math.isfinite(self.alpha):
            raise InterventionError(f"Steer's alpha must be a finite number; got {self.alpha}")
        if self.file is not None:
            object.__setattr__(self, "file", str(self.file))
            if self.site is not None:
                _check_site(self.site)
            return  # a reference: the plan reads the file
        object.__setattr__(self, "site", "resid_post" if self.site is None else self.site)
        object.__setattr__(self, "layer", -1 if self.layer is None else self.layer)
        _check_site(self.site)
        if not self.vector:
            raise InterventionError("Steer needs a non-empty vector (or file=PATH of a saved steering vector)")
        if not all(math.isfinite(v) for v in self.vector):
            raise InterventionError("Steer's vector and alpha must be finite numbers")

    @property
    def loaded(self) -> bool:
        """Whether the vector is here (inline, or read from its file)."""
        return bool(self.vector)

    def to_dict(self) -> dict[str, Any]:
        if self.file is None:
            out = super().to_dict()
            out.pop("file")
            out.pop("built_on")
            return out
        out = {"kind": self.kind, "file": self.file, "alpha": self.alpha, "phase": self.phase}
        if self.layer is not None:
            out["layer"] = self.layer
        return out

    def describe(self) -> str:
        if self.file is None:
            return f"steer:{self.site}@{_fmt_num(self.layer)}({len(self.vector)}-dim, alpha {self.alpha})"
        out = [f"steer:{self.file}" + ("" if self.layer is None else f"@{_fmt_num(self.layer)}")]
        if self.alpha != 1.0:
            out.append(f"a{self.alpha!r}")
        if self.phase != "both":
            out.append(self.phase)
        return ":".join(out)


@dataclass(frozen=True, eq=False)
class Hook(Intervention):
    """Your own function on the activation at a hook point, run inside the audited machinery.

    ``fn(x)`` or ``fn(x, call)`` receives (a copy of) the activation ``x``
    ``[B, T, D]`` of one forward call and returns the new activation (same
    shape), or None to keep its argument as it left it (changed in place, or
    not). ``call`` is passed when the function's second positional parameter
    has no default. ``call`` (a :class:`HookCall`) says which phase and decode
    step this is, the absolute target positions of ``x``'s columns, and
    ``mask`` ``[B, T]``: the positions whose result is kept -- real tokens
    (never padding, never BOS) of the rows whose plan holds the hook, as for
    every built-in intervention. Elsewhere the output is discarded, so a
    function that treats each position (or each row) on its own gives a
    left-padded batch the same result as each prompt alone; one that mixes
    rows or reads padding does not. Runs in ``generate``, ``apply`` and
    experiments built in Python; the audit counts the forwards and positions
    it ran at (``change_norm`` says how much it changed). ``phase``: prompt,
    decode or both. ``name`` labels it in the audit and the plan's text
    (default: the function's name).

    On CUDA, ``generate``'s decode loop may replay the step as a CUDA graph:
    the function's tensor operations are recorded once and replayed, host-side
    logic (``print``, ``.item()``, Python branches on values) runs at capture
    only; set ``TRANSFERLAB_DECODE=eager`` for a function that needs it.

    A hook holds a Python function: it has no dict/TOML form and is never read
    back from a results table (its row records the description only).
    """

    kind: ClassVar[str] = "hook"
    needs_source: ClassVar[bool] = False
    site: str = "resid_post"
    layer: Any = -1
    fn: Any = None
    phase: str = "both"
    name: str | None = None

    def __post_init__(self):
        _check_site(self.site)
        _check(self.phase, PHASES, "Hook.phase")
        if not callable(self.fn):
            raise InterventionError(f"Hook needs a function fn(x) or fn(x, call); got {type(self.fn).__name__}")
        if self.name is None:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", type(self.fn).__name__))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["fn"] = f"{self.name}@{id(self.fn):x}"  # which function object (a hook is never rebuilt from a dict)
        return out

    def describe(self) -> str:
        out = [f"fn:{self.name}", f"{self.site}@{_fmt_num(self.layer)}"]
        if self.phase != "both":
            out.append(self.phase)
        return ":".join(out)


@dataclass(frozen=True)
class HookCall:
    """What a :class:`Hook`'s function is told about the forward call it edits."""

    phase: str  # "prompt" or "decode"
    step: Any  # decode step (new token index fed), 0 at the prompt phase; a 0-dim tensor in graph-captured loops
    positions: Any  # [B, T] absolute target positions of x's columns
    mask: Any  # [B, T] True where the function's output is kept


KINDS: dict[str, type[Intervention]] = {cls.kind: cls for cls in (KVSplice, Patch, HeadPatch, Ablate, Noise, Steer)}


def intervention_from_dict(data: dict) -> Intervention:
    """Rebuild an intervention from ``to_dict`` output (or a TOML table)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise InterventionError(f"unknown intervention kind {kind!r}; known: {', '.join(KINDS)}")
    cls = KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise InterventionError(
            f"{kind}: unknown field(s) {', '.join(sorted(unknown))}; fields are {', '.join(sorted(names))}"
        )
    for key in ("positions", "heads", "vector"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    return cls(**data)
