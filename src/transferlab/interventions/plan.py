"""Plans, and the plan mini-language of the command line.

A :class:`Plan` is an ordered list of interventions; a condition in an
experiment is a named plan. Plans round-trip through plain dicts (TOML) and
through a one-line mini-language::

    kv:all + v_proj@27:w16:both

Items are joined by ``+``; each item is a head followed by ``:``-separated
options.

=====================================  =============================================
item                                    meaning
=====================================  =============================================
``kv[:LAYERS][:ALIGN][:ROPE][:wN]``    KVSplice. LAYERS ``all`` (default),
                                        ``early``/``middle``/``late`` (thirds),
                                        ``18,25,27`` (indices or depth fractions)
                                        or ``4-8`` (layers 4..7);
                                        ALIGN ``right``/``left``/``prepend``/
                                        ``insert`` or ``pA-B`` (range); ROPE
                                        ``reposition``/``keep``; ``wN`` the last
                                        N slots (right; insert: of the source's
                                        message) or the first N (left)
``SITE@LAYER[:opts]``                   Patch. opts: ``wN`` window, ``fX`` fraction,
                                        ``pA-B`` positions, ``prompt``/``decode``/
                                        ``both``, ``replace``/``add``/``mix``, ``aX``
                                        alpha, ``last``/``mean``/``cycle``/``lockstep``
                                        decode value,
                                        ``hI,J`` kv heads or ``qhI,J`` query heads
                                        (makes it a HeadPatch)
``ablate:SITE@LAYER[:zero|mean]``       Ablate (``hI,J``/``qhI,J`` heads, a phase)
``noise:SITE@LAYER[:opts]``             Noise, norm-matched unless ``raw``;
                                        ``seedN``, ``sdX``, and the Patch opts
``fn:MODULE.FUNC:SITE@LAYER[:PHASE]``   Hook: the importable function FUNC run on
                                        the site's activation (``tl.Hook`` in
                                        Python takes any function)
``steer:PATH[@LAYER][:aX][:PHASE]``     Steer: ``X`` times the steering vector saved
                                        at PATH (``transferlab steer build``) added
                                        at every position; LAYER picks one of the
                                        file's layers (index or depth fraction;
                                        optional when it holds one). PATH may not
                                        contain ``:`` or ``+``
=====================================  =============================================

An inline ``Steer(vector=...)`` exists only in the dict/TOML and Python forms.
A plan reads each file-form ``Steer``'s file when it is built
(:func:`~transferlab.interventions.steering.resolve_steer`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..sites import ACTIVATION_SITES, SiteError
from ..suggest import did_you_mean
from .steering import resolve_steer
from .types import (
    ALIGNS,
    BANDS,
    DECODE_VALUES,
    FIRSTS,
    LENGTHENING,
    MODES,
    PHASES,
    ROPES,
    Ablate,
    HeadPatch,
    Hook,
    Intervention,
    InterventionError,
    KVSplice,
    Noise,
    Patch,
    Steer,
    intervention_from_dict,
)


@dataclass(frozen=True)
class Plan:
    """An ordered list of interventions (empty = the unpatched baseline)."""

    interventions: tuple[Intervention, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for item in self.interventions:
            if not isinstance(item, Intervention):
                raise InterventionError(f"a plan holds interventions, got {type(item).__name__}")
        object.__setattr__(self, "interventions", tuple(resolve_steer(i) for i in self.interventions))
        splices = [i for i in self.interventions if isinstance(i, KVSplice)]
        grow = [s.align for s in splices if s.align in LENGTHENING]
        if grow and len(splices) > 1:
            raise InterventionError(f"a {grow[0]} KVSplice cannot be combined with another KVSplice")

    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.interventions)

    def __len__(self) -> int:
        return len(self.interventions)

    def __add__(self, other: "Plan | Intervention") -> "Plan":
        extra = other.interventions if isinstance(other, Plan) else (other,)
        return Plan(self.interventions + tuple(extra))

    @property
    def needs_source(self) -> bool:
        return any(i.needs_source for i in self.interventions)

    def to_dicts(self) -> list[dict]:
        return [i.to_dict() for i in self.interventions]

    @classmethod
    def from_dicts(cls, items: Iterable[dict]) -> "Plan":
        return cls(tuple(intervention_from_dict(d) for d in items))

    @classmethod
    def parse(cls, text: str) -> "Plan":
        return parse_plan(text)

    def __str__(self) -> str:
        return " + ".join(format_intervention(i) for i in self.interventions) or "(none)"


def as_plan(value) -> Plan:
    """Accept a Plan, an intervention, a list of them or of dicts, or mini-language text."""
    if value is None:
        return Plan()
    if isinstance(value, Plan):
        return value
    if isinstance(value, Intervention):
        return Plan((value,))
    if isinstance(value, str):
        return parse_plan(value)
    items = list(value)
    return Plan(tuple(intervention_from_dict(v) if isinstance(v, dict) else v for v in items))


def _num(text: str):
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_heads(opt: str, where: str):
    try:
        return tuple(int(h) for h in opt.split(",") if h != "")
    except ValueError:
        raise InterventionError(f"{where}: heads must be integers, got {opt!r}") from None


def _is_heads(opt: str) -> bool:
    """``h1,2`` (or ``h-1``, refused later as out of range) -- not ``half`` or other words."""
    return opt.startswith("h") and (opt[1:2].isdigit() or opt[1:2] == "-")


def _head_opt(opt: str, where: str) -> dict | None:
    """``qhI,J`` (query heads) or ``hI,J`` (kv heads) as keyword arguments; None for other options."""
    if opt.startswith("qh"):
        return {"heads": _parse_heads(opt[2:], where), "head_kind": "query"}
    if _is_heads(opt):
        return {"heads": _parse_heads(opt[1:], where)}
    return None


# what float() reads, nan and inf included (the intervention itself then says which values it takes)
_NUMBER = re.compile(r"[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf(inity)?)", re.IGNORECASE)
_POSITIONS = re.compile(r"p(\d+)-(\d+)")

# the option forms that carry a value, as the messages name them
PATCH_FORMS = (
    "wN (window)",
    "fX (fraction)",
    "pA-B (positions)",
    "aX (alpha)",
    "hI,J (kv heads)",
    "qhI,J (query heads)",
)
PATCH_WORDS = PHASES + MODES + DECODE_VALUES
KV_WORDS = ("all",) + ALIGNS + ROPES + tuple(f"{f}first" for f in FIRSTS)
KV_FORMS = ("LAYERS (e.g. 18,25,27 or 0.5)", "wN (window)", "pA-B (positions)")


def _valued(opt: str, prefix: str) -> str | None:
    """The number after ``prefix`` in ``opt`` (``f0.5`` -> ``0.5``), or None if ``opt`` is not that form."""
    rest = opt[len(prefix) :]
    return rest if opt.startswith(prefix) and _NUMBER.fullmatch(rest) else None


def unknown_option(where: str, opt: str, words: tuple[str, ...], forms: tuple[str, ...], kind: str = "") -> str:
    """``<where>: unknown option 'x'; did you mean 'y'? (options: ...)``: the words and forms that are allowed."""
    hint = did_you_mean(opt, words)
    listing = f"options: {', '.join(words + forms)}"
    return f"{where}: unknown {kind + ' ' if kind else ''}option {opt!r}; " + (
        f"{hint} ({listing})" if hint else listing
    )


def _parse_patch_opts(opts: list[str], where: str, words: tuple[str, ...] = PATCH_WORDS, kind: str = "") -> dict:
    kw: dict = {}
    for opt in opts:
        if opt in PHASES:
            kw["phase"] = opt
        elif opt in MODES:
            kw["mode"] = opt
        elif opt in DECODE_VALUES:
            kw["decode"] = opt
        elif (heads := _head_opt(opt, where)) is not None:
            kw.update(heads)
        elif opt.startswith("w") and opt[1:].isdigit():
            kw["window"] = int(opt[1:])
        elif (value := _valued(opt, "f")) is not None:
            kw["fraction"] = float(value)
        elif m := _POSITIONS.fullmatch(opt):
            kw["positions"] = (int(m[1]), int(m[2]))
        elif (value := _valued(opt, "a")) is not None:
            kw["alpha"] = float(value)
        else:
            raise InterventionError(unknown_option(where, opt, words, PATCH_FORMS, kind))
    return kw


def _site_layer(text: str, where: str):
    if "@" not in text:
        raise InterventionError(f"{where}: expected SITE@LAYER (e.g. v_proj@27), got {text!r}")
    site, layer = text.split("@", 1)
    try:
        return site, _num(layer)
    except ValueError:
        raise InterventionError(f"{where}: layer {layer!r} is not a number") from None


def parse_intervention(text: str) -> Intervention:
    text = text.strip()
    parts = [p.strip() for p in text.split(":")]
    head, opts = parts[0], parts[1:]
    where = f"plan item {text!r}"
    try:
        if head == "kv":
            kw: dict = {}
            for opt in opts:
                if opt == "all" or opt in BANDS:
                    kw["layers"] = opt
                elif re.fullmatch(r"\d+-\d+", opt):  # A-B: layers A..B-1
                    a, b = (int(x) for x in opt.split("-", 1))
                    if b <= a:
                        raise InterventionError(f"{where}: layer range {opt!r} is empty (A-B means A..B-1)")
                    kw["layers"] = tuple(range(a, b))
                elif opt and (opt[0].isdigit() or opt[0] in "-."):
                    kw["layers"] = tuple(_num(x) for x in opt.split(",") if x)
                elif opt in ALIGNS:
                    kw["align"] = opt
                elif opt in ROPES:
                    kw["rope"] = opt
                elif opt.endswith("first") and opt[: -len("first")] in FIRSTS:
                    kw["first"] = opt[: -len("first")]
                elif opt.startswith("w") and opt[1:].isdigit():
                    kw["window"] = int(opt[1:])
                elif m := _POSITIONS.fullmatch(opt):
                    kw["align"], kw["positions"] = "range", (int(m[1]), int(m[2]))
                else:
                    raise InterventionError(unknown_option(where, opt, KV_WORDS, KV_FORMS, "kv"))
            return KVSplice(**kw)
        if head in ("ablate", "noise"):
            if not opts:
                raise InterventionError(f"{where}: expected {head}:SITE@LAYER")
            site, layer = _site_layer(opts[0], where)
            rest = opts[1:]
            if head == "ablate":
                kw = {"site": site, "layer": layer}
                for opt in rest:
                    if opt in ("zero", "mean"):
                        kw["how"] = opt
                    elif opt in PHASES:
                        kw["phase"] = opt
                    elif (heads := _head_opt(opt, where)) is not None:
                        kw.update(heads)
                    else:
                        raise InterventionError(
                            unknown_option(
                                where,
                                opt,
                                ("zero", "mean") + PHASES,
                                ("hI,J (kv heads)", "qhI,J (query heads)"),
                                "ablate",
                            )
                        )
                return Ablate(**kw)
            kw = {"site": site, "layer": layer}
            patch_opts = []
            for opt in rest:
                if opt == "raw":
                    kw["norm_matched"] = False
                elif opt.startswith("seed") and opt[4:].isdigit():
                    kw["seed"] = int(opt[4:])
                elif (value := _valued(opt, "sd")) is not None:
                    kw["std"] = float(value)
                else:
                    patch_opts.append(opt)
            kw.update(_parse_patch_opts(patch_opts, where, ("raw", "seedN", "sdX") + PATCH_WORDS, "noise"))
            if "heads" in kw:
                raise InterventionError(f"{where}: noise does not take heads")
            return Noise(**kw)
        if head == "steer":
            return _parse_steer(opts, where)
        if head == "fn":
            return _parse_fn(opts, where)
        site, layer = _site_layer(head, where)
        kw = {"site": site, "layer": layer, **_parse_patch_opts(opts, where)}
        return HeadPatch(**kw) if "heads" in kw else Patch(**kw)
    except (InterventionError, SiteError):
        raise
    except (TypeError, ValueError) as exc:  # a number that is not one: "pa-b", "fx", "seedx", "kv:1,x"
        raise InterventionError(f"{where}: malformed option ({exc})") from None


def _parse_steer(opts: list[str], where: str) -> Steer:
    """``steer:PATH[@LAYER][:aX][:PHASE]`` (the vector is read when the plan is built)."""
    if not opts or not opts[0]:
        raise InterventionError(
            f"{where}: expected steer:PATH[@LAYER][:aALPHA] with PATH a saved steering vector "
            "(transferlab steer build); an inline vector exists only as Steer(vector=...) in Python or TOML"
        )
    path, layer = opts[0], None
    head, sep, tail = path.rpartition("@")
    if sep and head:
        try:
            path, layer = head, _num(tail)
        except ValueError:
            pass  # an '@' inside the file name
    if path in ACTIVATION_SITES and not Path(path).exists():
        raise InterventionError(
            f"{where}: {path!r} is a site, not a steering vector file: the mini-language's steer reads a saved "
            "vector (steer:PATH[@LAYER][:aALPHA], built by transferlab steer build); an inline vector exists "
            "only as Steer(vector=...) in Python or TOML"
        )
    kw: dict = {"file": path, "layer": layer}
    for opt in opts[1:]:
        if opt in PHASES:
            kw["phase"] = opt
        elif opt.startswith("a"):
            kw["alpha"] = float(opt[1:])
        else:
            raise InterventionError(f"{where}: unknown steer option {opt!r} (options: aALPHA, prompt|decode|both)")
    return Steer(**kw)


def _parse_fn(opts: list[str], where: str) -> Hook:
    """``fn:PACKAGE.MODULE.FUNCTION:SITE@LAYER[:PHASE]``: a :class:`Hook` running an importable function."""
    if len(opts) < 2 or not opts[0]:
        raise InterventionError(
            f"{where}: expected fn:MODULE.FUNCTION:SITE@LAYER[:prompt|decode|both] (a function your code can "
            "import, e.g. fn:mylab.hooks.zero_neuron:mlp_hidden@12); in Python pass tl.Hook(site, layer, fn)"
        )
    path = opts[0]
    site, layer = _site_layer(opts[1], where)
    kw: dict = {"site": site, "layer": layer, "fn": _import_function(path, where), "name": path}
    for opt in opts[2:]:
        if opt not in PHASES:
            raise InterventionError(f"{where}: unknown fn option {opt!r} (options: prompt|decode|both)")
        kw["phase"] = opt
    return Hook(**kw)


def _import_function(path: str, where: str):
    """The object at dotted ``path`` (``package.module.function`` or ``module.Class.method``)."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            break
        if callable(obj):
            return obj
        raise InterventionError(f"{where}: {path} is not a function")
    raise InterventionError(
        f"{where}: cannot import {path!r}; give the dotted path of a function on the Python path "
        "(package.module.function)"
    )


def parse_plan(text: str) -> Plan:
    """Parse the mini-language (see module docstring). Empty text or 'none' is the empty plan."""
    text = text.strip()
    if text in ("", "none", "baseline", "(none)"):
        return Plan()
    return Plan(tuple(parse_intervention(item) for item in text.split("+")))


def format_intervention(i: Intervention) -> str:
    """The mini-language form of one intervention (inverse of :func:`parse_intervention`)."""
    return i.describe()
