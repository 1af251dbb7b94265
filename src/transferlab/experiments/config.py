"""``ExperimentConfig``: a whole experiment, declared in TOML and validated.

Every problem in a config is reported at once, each with its key path
(``conditions.2.plan: unknown site 'v_prj'``), and ``--set key=value``
overrides any field from the command line (``--set model.spec=tiny:llama``,
``--set prompts.n=20``, ``--set seeds=[1,2]``; ``--set model=X`` is short for
``model.spec``). A condition is a named plan; see the presets in
``configs/`` for complete examples.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..interventions import InterventionError, Plan, as_plan, load_steering
from ..sites import SiteError
from ..stats.family import ContrastError, parse_contrast
from ..suggest import closest, did_you_mean


class ConfigError(ValueError):
    """A config with problems; ``problems`` lists ``(key path, message)``."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "config"):
        self.problems = problems
        self.source = source
        if len(problems) == 1:  # one problem, one line
            ((path, msg),) = problems
            super().__init__(f"{source}: {path}: {msg}" if path != source else f"{source}: {msg}")
            return
        lines = "\n".join(f"  - {path}: {msg}" for path, msg in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


class _Problems(ValueError):
    """Cross-field problems, each with its own key path (validate_config unpacks them)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


def _cross_problems(names: list[str], reference: Any, has_sweeps: bool) -> list[tuple[str, str]]:
    """Checks across fields: condition names unique, some condition, the reference among them."""
    out = []
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        out.append(("conditions", f"condition names must be unique; repeated: {', '.join(dupes)}"))
    if not names and not has_sweeps:
        out.append(("conditions", "no conditions: add [[conditions]] tables (at least a baseline)"))
    if reference not in names:
        out.append(
            (
                "reference",
                f"reference condition {reference!r} is not among the conditions ({', '.join(names) or 'none'})",
            )
        )
    return out


def _raw_cross_problems(data: dict) -> list[tuple[str, str]]:
    """The cross-field checks on the raw data, so they are reported alongside field errors."""
    if not isinstance(data, dict):
        return []
    out = []
    if "model" in data and data.get("models"):
        out.append(
            (
                "model",
                "give either model or models, not both (this config has [[models]]; "
                "override them with --set 'models=[{spec=\"tiny:llama\"}]' or models.0.spec=...)",
            )
        )
    conds = data.get("conditions", [])
    if not isinstance(conds, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in conds):
        return out
    names = [c["name"] for c in conds]
    primary = data.get("primary")
    if "primary" in data and primary is not None and primary not in names:  # the default may be absent; a typo not
        out.append(
            ("primary", f"primary condition {primary!r} is not among the conditions ({', '.join(names) or 'none'})")
        )
    return out + _cross_problems(names, data.get("reference", "baseline"), bool(data.get("sweeps")))


_RUN_NAME = re.compile(r"^\w[\w.\- ]{0,99}$")


def run_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run directory (None if it can).

    A run directory is ``<output_dir>/<name>-<time>-<hash>``, so the name must be
    one safe path component: 1-100 letters, digits, ``_``, ``-``, ``.`` or spaces,
    starting with a letter, digit or ``_`` and not ending in a space or dot.
    ``../x`` would leave ``output_dir``, ``a/b`` would nest directories and an
    empty name would make ``runs/-<time>``; they are refused, not rewritten.
    """
    if not isinstance(name, str) or not _RUN_NAME.match(name) or name[-1] in " .":
        return (
            f"{name!r} cannot name a run directory: use 1-100 letters, digits, '_', '-', '.' or spaces, "
            "starting with a letter, digit or '_' (no '/', no '..'), e.g. name = \"my_run\""
        )
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # temperature = nan or inf: refused


class ModelSpec(_Strict):
    spec: str = "stories260K"
    dtype: str | None = None
    device: str | None = None
    attn_implementation: str | None = None
    fuse: bool | None = Field(
        None,
        description="compiled fused RMSNorm/SiLU/RoPE kernels (transferlab.engine.fused); "
        "default: on for a model on a CUDA device",
    )
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = Field(
        None,
        description="'auto': split a model too large for one GPU over every visible GPU (accelerate); "
        "device is then unused",
    )


class Prompts(_Strict):
    bank: str = "stories"
    sources: list[str] = Field(default_factory=lambda: ["story_source"], description="bank groups of source prompts")
    targets: list[str] = Field(default_factory=lambda: ["story_target"], description="bank groups of target prompts")
    n: int = Field(300, ge=1)
    pair_seed: int = 0
    reuse: bool = True
    length_match: bool = False
    length_tolerance: int | None = Field(
        None,
        ge=0,
        description="pair only a source and a target whose token lengths differ by at most this many tokens "
        "(counted with the model's tokenizer in the run's format; every model's, for several); None: any lengths. "
        "Fewer qualifying pairs than n is refused, never silently shrunk (transferlab.experiments.pairs)",
    )
    format: Literal["raw", "chat"] = Field(
        "raw",
        description="'raw': prompts as plain text (the seed's); 'chat': each prompt as the user turn of the "
        "model's chat template, generation prompt added (see transferlab.engine.batching)",
    )

    @model_validator(mode="after")
    def _one_length_rule(self):
        if self.length_match and self.length_tolerance is not None:
            raise ValueError(
                "give length_match (rank-matching of the pairs drawn) or length_tolerance (only pairs within "
                "the tolerance), not both"
            )
        return self


class Generation(_Strict):
    max_new_tokens: int = Field(40, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    greedy: bool = False
    flavour: Literal["corrected", "seed"] = "corrected"
    stop_at_eos: bool = True


class GenerationOverride(_Strict):
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    greedy: bool | None = None
    flavour: Literal["corrected", "seed"] | None = None
    stop_at_eos: bool | None = None


class Condition(_Strict):
    name: str
    plan: str | list[dict] = ""
    prompt: Literal["target", "source"] = "target"
    source: Literal["pair", "target"] = "pair"  # "target": the target is its own source (self-patch control)
    generation: GenerationOverride = Field(default_factory=GenerationOverride)
    description: str = ""

    @field_validator("plan")
    @classmethod
    def _plan_parses(cls, value):
        try:
            as_plan(value)
        except (InterventionError, SiteError) as exc:
            raise ValueError(str(exc)) from None
        return value

    def parsed_plan(self) -> Plan:
        return as_plan(self.plan)


class Scoring(_Strict):
    scorers: list[str] = Field(default_factory=lambda: ["seed_v1", "strict", "source_overlap", "collapse"])
    logit: bool = True
    logit_top_k: int = Field(20, ge=1)
    target_logprob: bool = Field(
        False,
        description="score target_answer_logprob: the mean log-probability the intervened model gives the first "
        "target_logprob_k tokens of the reference condition's continuation of the same pair and seed (teacher "
        "forced; the reference must be the target alone)",
    )
    target_logprob_k: int = Field(8, ge=1, description="tokens of the reference's continuation that it scores")


class RVSettings(_Strict):
    enabled: bool = True
    window: int = Field(16, ge=2)
    early: float | int = 5 / 32
    late: float | int = 27 / 32
    site: str = "v_proj"
    formula: Literal["squared", "unsquared"] = "squared"
    short: Literal["error", "nan", "shrink"] = "nan"


class Sweep(_Strict):
    """Generated conditions. ``kv_single_layer``: one KV splice per layer (and window);
    ``minimal_layers``: greedy backward elimination of KV-splice layers; ``steer_dose``: a steering vector
    (``file``) at each of ``layers`` (of the file's; "all": every one) times each of ``coefficients``, one
    condition ``steer@LAYER:aCOEF`` each (plan ``steer:FILE@LAYER:aCOEF``): a dose-response."""

    kind: Literal["kv_single_layer", "minimal_layers", "steer_dose"]
    layers: str | list[int | float] = "all"
    windows: list[int | None] = Field(default_factory=lambda: [None])
    extra_plan: str = ""
    keep_share: float = Field(0.8, gt=0, le=1)
    score: str = "source_lexicon"
    n_search: int | None = Field(None, ge=2)
    file: str | None = Field(None, description="steer_dose: the steering vector file (transferlab steer build)")
    coefficients: list[float] = Field(
        default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0], min_length=1, description="steer_dose: the coefficients"
    )

    @model_validator(mode="after")
    def _steer_dose_ok(self):
        if self.kind != "steer_dose":
            return self
        if self.file is None:
            raise ValueError(
                "a steer_dose sweep needs file = the steering vector file "
                "(build it: transferlab steer build --out FILE)"
            )
        if isinstance(self.layers, str) and self.layers != "all":
            raise ValueError(f"layers must be 'all' or a list of layers of the file; got {self.layers!r}")
        return self  # the file itself is read by the preflight (a preset names a file built later)

    def steer_problem(self) -> str | None:
        """Why a steer_dose sweep's file cannot serve it (missing, not a vector, a layer it lacks); None if fine."""
        try:
            vectors = load_steering(self.file)
            for layer in [] if self.layers == "all" else self.layers:
                vectors.layer(layer, self.file)
        except InterventionError as exc:
            return str(exc)
        return None


_NO_MARGIN = (
    "claims equivalence without a margin: a 'no effect' claim is a test against the largest difference you "
    "would still call no effect, chosen before the run; write {{contrast = {contrast!r}, margin = <that "
    "difference, in units of the primary score>}} and say in a comment how you chose it"
)


class EquivalenceClaim(_Strict):
    """A claim that ``contrast`` ("A - B") does not differ by more than ``margin`` on the primary score."""

    contrast: str
    margin: float = Field(gt=0, description="the largest difference still called no effect (primary score units)")

    @field_validator("contrast")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parse_contrast(value)
        except ContrastError as exc:
            raise ValueError(str(exc)) from None
        return value


class Analysis(_Strict):
    """The confirmatory family, named before the run: the primary score, the contrasts claimed to differ
    (Holm within these and the equivalence claims only) and the contrasts claimed not to differ by more than a
    margin (TOST). Every other comparison of the report is exploratory, with unadjusted p."""

    primary: str | None = Field(None, description="the score every confirmatory and equivalence claim is about")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    confirmatory: list[str] = Field(default_factory=list, description='contrasts "A - B" claimed to differ')
    equivalence: list[EquivalenceClaim] = Field(default_factory=list)

    @field_validator("confirmatory")
    @classmethod
    def _contrasts_parse(cls, value: list[str]) -> list[str]:
        for c in value:
            try:
                parse_contrast(c)
            except ContrastError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _margins_given(cls, data):
        """An equivalence claim without a margin is refused with the fix, before the field's own check."""
        if not isinstance(data, dict) or not isinstance(data.get("equivalence"), list):
            return data
        problems = []
        for i, e in enumerate(data["equivalence"]):
            contrast = e if isinstance(e, str) else e.get("contrast") if isinstance(e, dict) else None
            if isinstance(e, str) or (isinstance(e, dict) and e.get("margin") is None):
                problems.append((f"analysis.equivalence.{i}", f"{contrast!r} " + _NO_MARGIN.format(contrast=contrast)))
        if problems:
            raise _Problems(problems)
        return data

    def claims(self) -> list[tuple[str, tuple[str, str]]]:
        """(key path, (condition, reference)) of every claim."""
        out = [(f"analysis.confirmatory.{i}", parse_contrast(c)) for i, c in enumerate(self.confirmatory)]
        return out + [(f"analysis.equivalence.{i}", parse_contrast(e.contrast)) for i, e in enumerate(self.equivalence)]


_DROP = "change the claim, or run without the preset's family: --set 'analysis={}'"


def _analysis_problems(config: ExperimentConfig, names: list[str]) -> list[tuple[str, str]]:
    """The family against the conditions: they exist, a claim has a primary score, no claim twice (whether the
    run computes the primary score is checked with the scorers, in ``checks.preflight``)."""
    a = config.analysis
    claims = a.claims()
    out = []
    if claims and not a.primary:
        out.append(("analysis.primary", 'the claims need a primary score: add primary = "<one of scoring.scorers>"'))
    seen: dict[tuple[str, str], str] = {}
    for path, pair in claims:
        out += [
            (path, f"condition {c!r} is not among the conditions ({', '.join(names)}); {_DROP}")
            for c in pair
            if c not in names
        ]
        if pair in seen:
            out.append((path, f"the contrast '{pair[0]} - {pair[1]}' is already claimed at {seen[pair]}"))
        seen.setdefault(pair, path)
    return out


class ExperimentConfig(_Strict):
    name: str = "experiment"
    description: str = ""
    output_dir: str = "runs"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    batch_size: int | None = Field(
        None,
        ge=1,
        description="units per batch (None: on a GPU as many as the worker's free memory holds, shared evenly "
        "among Ray workers; 64 on the CPU). Results do not depend on it.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads of the process that runs the batches (None: torch's default). "
        "On a small shared CPU box 1 is the robust choice: two spinning threads crawl when another process "
        "holds a core (see benchmarks/README.md)",
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    models: list[ModelSpec] | None = None
    prompts: Prompts = Field(default_factory=Prompts)
    generation: Generation = Field(default_factory=Generation)
    conditions: list[Condition] = Field(default_factory=list)
    sweeps: list[Sweep] = Field(default_factory=list)
    scoring: Scoring = Field(default_factory=Scoring)
    rv: RVSettings = Field(default_factory=RVSettings)
    reference: str = "baseline"
    primary: str | None = "transfer"
    comparisons: list[tuple[str, str]] = Field(
        default_factory=list,
        description="extra paired comparisons [condition, reference] beside every condition vs the reference "
        "(e.g. the seed's transfer vs the seed's own baseline)",
    )
    analysis: Analysis = Field(default_factory=Analysis)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        problem = run_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _conditions_ok(self):
        names = [c.name for c in self.conditions]
        problems = _cross_problems(names, self.reference, bool(self.sweeps))
        for i, pair in enumerate(self.comparisons):
            problems += [
                (f"comparisons.{i}", f"condition {c!r} is not among the conditions ({', '.join(names)})")
                for c in pair
                if c not in names
            ]
        problems += _analysis_problems(self, names)
        if problems:
            raise _Problems(problems)
        if self.primary is not None and self.primary not in names:
            self.primary = None
        return self

    def model_specs(self) -> list[ModelSpec]:
        return list(self.models) if self.models else [self.model]

    def to_dict(self) -> dict:
        """Plain JSON data (``config.json``); without ``model`` when ``models`` is set, as it is unused."""
        return json.loads(self.model_dump_json(exclude={"model"} if self.models else None))


def _loc(loc) -> str:
    return ".".join(str(x) for x in loc) or "(top level)"


def _section(annotation) -> type[BaseModel] | None:
    """The config section (a model class) a field holds, through ``X | None`` and ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section(arg)
        if found is not None:
            return found
    return None


def _unknown_key(loc: tuple) -> str:
    """What pydantic calls "Extra inputs are not permitted", said with the key that was probably meant."""
    section: type[BaseModel] | None = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an entry of a list of sections (conditions.1.name)
        field = section.model_fields.get(part) if section else None
        section = _section(field.annotation) if field else None
    if section is None:
        return "unknown key"
    known = list(section.model_fields)
    parent = ".".join(str(x) for x in loc[:-1])
    found = closest(str(loc[-1]), known)
    hint = " or ".join(f"{parent + '.' if parent else ''}{k}" for k in found)
    listing = f"keys{' of ' + parent if parent else ''}: {', '.join(known)}"
    return f"unknown key; {'did you mean ' + hint + '? (' + listing + ')' if hint else listing}"


def _set_path(data: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    if keys == ["model"] and not isinstance(value, dict):
        keys = ["model", "spec"]
    cur = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(cur, list):
            where = ".".join(keys[:i]) or "(top level)"
            if not k.lstrip("-").isdigit():
                raise ValueError(f"{where} is a list: give an index, e.g. {where}.0")
            if not -len(cur) <= int(k) < len(cur):
                raise ValueError(f"{where} has {len(cur)} entries (indices 0..{len(cur) - 1}); no index {k}")
            k = int(k)
        if last:
            cur[k] = value
        else:
            if not isinstance(cur, list) and (k not in cur or not isinstance(cur[k], (dict, list))):
                cur[k] = {}
            cur = cur[k]


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML/JSON literal if it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = copy.deepcopy(data)
    problems = []
    for item in overrides or []:
        if "=" not in item:
            problems.append((item, "an override must look like key=value (e.g. prompts.n=20)"))
            continue
        key, value = item.split("=", 1)
        key = key.strip()
        head = key.split(".")[0]
        if head == "model" and data.get("models"):
            problems.append(
                (
                    key,
                    "this config runs [[models]], so model is unused; set models instead, e.g. "
                    "--set 'models=[{spec=\"tiny:llama\"}]' or --set models.0.spec=tiny:llama",
                )
            )
            continue
        if head == "models":
            data.pop("model", None)  # models replaces the config's single model
        try:
            _set_path(data, key, parse_value(value.strip()))
        except (ValueError, IndexError, TypeError) as exc:
            problems.append((key, f"cannot set: {exc}"))
    if problems:
        raise ConfigError(problems, "--set")
    return data


def validate_config(data: dict, source: str = "config") -> ExperimentConfig:
    problems: list[tuple[str, str]] = []
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            err = (e.get("ctx") or {}).get("error")
            if isinstance(err, _Problems):
                problems.extend(err.problems)
            elif e["type"] == "extra_forbidden":
                problems.append((_loc(e["loc"]), _unknown_key(e["loc"])))
            else:
                problems.append((_loc(e["loc"]), e["msg"].removeprefix("Value error, ")))
        config = None
    for p in _raw_cross_problems(data):  # also when field errors stopped the model validator
        if p not in problems:
            problems.append(p)
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a TOML config (default: the demo preset), apply ``--set`` overrides, validate."""
    from .presets import preset_path

    p = Path(path) if path is not None else preset_path("demo")
    if not p.exists():
        try:
            p = preset_path(str(path))
        except FileNotFoundError:
            from .presets import list_presets

            hint = did_you_mean(Path(str(path)).name.removesuffix(".toml"), list_presets())
            raise ConfigError(
                [
                    (
                        str(path),
                        f"no such config file or preset; {hint + ' ' if hint else ''}"
                        f"(presets: {', '.join(list_presets())})",
                    )
                ],
                "config",
            ) from None
    if p.is_dir():
        raise ConfigError([(str(p), "is a directory; give a config file (.toml) or a preset name")], "config")
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(p), f"not UTF-8 text (byte {exc.start}); save the config as UTF-8")], str(p)) from None
    except OSError as exc:
        raise ConfigError([(str(p), f"cannot be read ({exc.strerror or exc})")], str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(p), f"not valid TOML: {exc}")], str(p)) from None
    return validate_config(apply_overrides(data, overrides), str(p))
