"""Prompt banks: versioned, schema-checked collections of prompts.

A **bank** is one or more YAML (or JSON) files under ``prompts/data/``,
named ``<bank>.<part>.yaml``. Two banks ship:

- ``research``: recursion levels ``L1`` (a hint of self-observation) to
  ``L5`` (fully self-referential, fixed-point language); baselines (``math``,
  ``factual``, ``creative``, ``impossible``, ``personal``,
  ``instructional``) each with a length-matched ``<group>_long`` variant of at
  least 16 words; confounds (``long_nonrecursive``, ``pseudo_recursive``,
  ``repetitive``); kill-switch controls (``kill_repetition``, ``kill_ood``,
  ``kill_surreal_first``, ``kill_surreal_third``).
- ``stories``: for the embedded TinyStories model: ``story_source`` openings,
  each with a marker lexicon, and plain ``story_target`` openings that
  contain none of those markers.

**File schema** (checked on load; unknown keys are errors)::

    bank: research            # the bank name; every file of a bank agrees
    schema: 1
    groups:
      L3:                     # group name
        pillar: recursion     # recursion | baseline | confound | kill_switch | story
        description: ...
        level: 3              # optional, 1-5: recursion level
        min_words: 16         # optional length limits (whitespace words)
        max_words: 80
        requires_markers: false
        length_variant_of: math   # optional: this group is math's long variant
        prompts:
          - id: L3_01         # <group>_<NN>, two or more digits, unique in the bank
            text: ...
            markers: [...]    # optional marker lexicon (required if requires_markers)
            answer: "391"     # optional known answer: one string or a list of accepted ones
            meta: {...}       # optional free-form mapping

A violation raises :class:`BankError` naming the file, the entry (its id and
position) and the field.

**Version.** ``PromptBank.version`` is the sha256 of the bank's files: for
each file in name order, its name, a NUL, its byte length, a NUL and its
bytes. Any edit, even to a comment, gives a new version; the runner records
it with every run.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..suggest import did_you_mean

DATA_DIR = Path(__file__).parent / "data"
SCHEMA_VERSION = 1
PILLARS = ("recursion", "baseline", "confound", "kill_switch", "story")
_GROUP_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class BankError(ValueError):
    """A malformed bank file: names the file, the entry and the field."""

    def __init__(self, file: str | Path, entry: str, field: str, message: str) -> None:
        self.file, self.entry, self.field, self.message = str(file), entry, field, message
        super().__init__(f"{file}: entry {entry}: field '{field}': {message}")


@dataclass(frozen=True)
class Prompt:
    """One prompt of a bank.

    ``level`` is the recursion level (1-5) for ``L*`` groups, else None.
    ``markers`` is the prompt's marker lexicon (stories sources), else None.
    ``answers`` are the accepted short answers of a prompt with a known
    answer (the research bank's math and factual prompts; the ``answer``
    scorer looks for them in a continuation), else None.
    ``meta`` holds the entry's free-form metadata plus ``pillar``.
    """

    id: str
    group: str
    text: str
    level: int | None = None
    markers: tuple[str, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    answers: tuple[str, ...] | None = None

    @property
    def n_words(self) -> int:
        """Whitespace word count (the unit of the bank's length limits)."""
        return len(self.text.split())


@dataclass(frozen=True)
class GroupInfo:
    """A group's declared properties (everything but its prompts)."""

    name: str
    pillar: str
    description: str
    file: str
    level: int | None = None
    min_words: int | None = None
    max_words: int | None = None
    requires_markers: bool = False
    length_variant_of: str | None = None


# ----------------------------------------------------------------- file schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _EntrySpec(_Strict):
    id: str
    text: str = Field(min_length=1)
    markers: list[str] | None = None
    answer: str | list[str] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class _GroupSpec(_Strict):
    pillar: Literal["recursion", "baseline", "confound", "kill_switch", "story"]
    description: str = Field(min_length=1)
    level: int | None = Field(default=None, ge=1, le=5)
    min_words: int | None = Field(default=None, ge=1)
    max_words: int | None = Field(default=None, ge=1)
    requires_markers: bool = False
    length_variant_of: str | None = None
    prompts: list[_EntrySpec] = Field(min_length=1)


class _FileSpec(_Strict):
    bank: str = Field(min_length=1)
    schema_: Literal[1] = Field(alias="schema")
    groups: dict[str, _GroupSpec] = Field(min_length=1)


def _entry_label(raw: Any, group: str, idx: int) -> str:
    where = f"groups.{group}.prompts[{idx}]"
    try:
        pid = raw["groups"][group]["prompts"][idx].get("id")
    except (KeyError, IndexError, TypeError, AttributeError):
        pid = None
    return f"{pid} ({where})" if isinstance(pid, str) else where


def _raise_from_pydantic(path: Path, raw: Any, err: ValidationError) -> None:
    e = err.errors()[0]
    loc = list(e["loc"])
    msg = e["msg"]
    if len(loc) >= 4 and loc[0] == "groups" and loc[2] == "prompts" and isinstance(loc[3], int):
        fld = ".".join(map(str, loc[4:])) or "(entry)"
        raise BankError(path, _entry_label(raw, str(loc[1]), loc[3]), fld, msg)
    if len(loc) >= 2 and loc[0] == "groups":
        raise BankError(path, f"group {loc[1]}", ".".join(map(str, loc[2:])) or "(group)", msg)
    raise BankError(path, "(file)", ".".join(map(str, loc)) or "(file)", msg)


# libyaml's safe loader where PyYAML was built with it (its wheels are): the same documents, parsed in C; the
# pure-Python one took 0.25 s for W300's 600-prompt bank on a 2-core box, libyaml 0.016 s
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_PARSED: dict = {}  # (path, sha1 of the bytes) -> (spec, raw): a run reads its bank 3 times (checks, driver, worker)


def _read_file(path: Path) -> tuple[_FileSpec, Any]:
    """A bank file parsed and validated; parsed once per content of the file per process (reading and hashing
    the bytes is cheap next to YAML and validation; a timestamp would miss a same-size rewrite)."""
    try:
        data = path.read_bytes()
    except OSError:
        data = None  # _parse_file says what is wrong with it
    key = (str(path.resolve()), hashlib.sha1(data).hexdigest()) if data is not None else None
    if key is not None and key in _PARSED:
        return _PARSED[key]
    out = _parse_file(path, data)
    if key is not None:
        if len(_PARSED) > 64:
            _PARSED.clear()
        _PARSED[key] = out
    return out


def _parse_file(path: Path, data: bytes | None = None) -> tuple[_FileSpec, Any]:
    """``path`` (its bytes ``data`` when already read) parsed and validated."""
    if not path.is_file():
        raise BankError(path, "(file)", "(file)", "is not a file (a directory?); a bank folder holds only bank files")
    try:
        raw = yaml.load((data if data is not None else path.read_bytes()).decode("utf-8"), Loader=LOADER)
    except UnicodeDecodeError as exc:
        raise BankError(path, "(file)", "(encoding)", f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise BankError(path, "(file)", "(file)", f"cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise BankError(path, where, "(syntax)", f"not valid YAML/JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BankError(path, "(file)", "(file)", "top level must be a mapping with bank/schema/groups")
    try:
        return _FileSpec.model_validate(raw), raw
    except ValidationError as err:
        _raise_from_pydantic(path, raw, err)
        raise  # unreachable


def _check_group(path: Path, raw: Any, name: str, g: _GroupSpec) -> None:
    if not _GROUP_RE.match(name):
        raise BankError(path, f"group {name}", "(name)", "group names are letters, digits, '_'")
    if g.min_words and g.max_words and g.min_words > g.max_words:
        raise BankError(path, f"group {name}", "min_words", "min_words > max_words")
    id_re = re.compile(rf"^{re.escape(name)}_\d{{2,}}$")
    for i, e in enumerate(g.prompts):
        label = _entry_label(raw, name, i)
        if not id_re.match(e.id):
            raise BankError(path, label, "id", f"must be '{name}_<NN>' (two or more digits), got {e.id!r}")
        if e.text != e.text.strip() or not e.text.strip():
            raise BankError(path, label, "text", "must be non-empty without leading/trailing whitespace")
        n = len(e.text.split())
        if g.min_words and n < g.min_words:
            raise BankError(path, label, "text", f"{n} words, group {name} needs at least {g.min_words}")
        if g.max_words and n > g.max_words:
            raise BankError(path, label, "text", f"{n} words, group {name} allows at most {g.max_words}")
        if g.requires_markers and not e.markers:
            raise BankError(path, label, "markers", f"group {name} requires a non-empty marker list")
        if e.answer is not None:
            accepted = [e.answer] if isinstance(e.answer, str) else e.answer
            if not accepted or any(not a.strip() or a != a.strip() for a in accepted):
                raise BankError(
                    path, label, "answer", "give one non-empty answer or a non-empty list of them, without outer spaces"
                )
        if e.markers is not None:
            if any(not m.strip() or m != m.strip() for m in e.markers):
                raise BankError(path, label, "markers", "markers must be non-empty, without outer spaces")
            if len({m.lower() for m in e.markers}) != len(e.markers):
                raise BankError(path, label, "markers", "duplicate marker (case-insensitive)")
            words = set(re.findall(r"[a-z0-9']+", e.text.lower()))
            absent = [
                m
                for m in e.markers  # a marker may be an inflection's stem ("carrot" in "carrots")
                if not all(any(w.startswith(part) for w in words) for part in re.findall(r"[a-z0-9']+", m.lower()))
            ]
            if absent:
                raise BankError(
                    path,
                    label,
                    "markers",
                    f"marker(s) {absent} do not occur in the prompt's own text; a source's lexicon "
                    "must be words the source itself uses",
                )


# ----------------------------------------------------------------- the bank


class PromptBank:
    """A loaded bank: prompts in file order, group declarations, a version."""

    def __init__(
        self, name: str, prompts: Sequence[Prompt], groups: Mapping[str, GroupInfo], version: str, files: Sequence[Path]
    ) -> None:
        self.name = name
        self.prompts: tuple[Prompt, ...] = tuple(prompts)
        self.group_info: dict[str, GroupInfo] = dict(groups)
        self.version = version
        self.files: tuple[Path, ...] = tuple(files)
        self._by_id = {p.id: p for p in self.prompts}

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_id

    def __repr__(self) -> str:
        return (
            f"PromptBank({self.name!r}, {len(self)} prompts, {len(self.group_info)} groups, "
            f"version={self.version[:12]})"
        )

    def groups(self) -> list[str]:
        """Group names in file order."""
        return list(self.group_info)

    def get(self, pid: str) -> Prompt:
        """The prompt with id ``pid``; KeyError with close matches if absent."""
        try:
            return self._by_id[pid]
        except KeyError:
            hint = did_you_mean(pid, self._by_id)
            raise KeyError(f"no prompt {pid!r} in bank {self.name!r}{'; ' + hint if hint else ''}") from None

    def select(
        self, groups: Sequence[str] | None = None, *, pillar: str | None = None, ids: Sequence[str] | None = None
    ) -> list[Prompt]:
        """Prompts of the given groups (all if None), optionally of one pillar
        and/or among ``ids``; bank order. Unknown groups or ids are errors."""
        if isinstance(groups, str):
            groups = [groups]
        if groups is not None:
            unknown = [g for g in groups if g not in self.group_info]
            if unknown:
                hints = "; ".join(f"{g!r}: {h}" for g in unknown if (h := did_you_mean(g, self.group_info)))
                raise KeyError(
                    f"unknown groups {unknown} in bank {self.name!r}; {hints + '; ' if hints else ''}"
                    f"groups: {self.groups()}"
                )
        if pillar is not None and pillar not in PILLARS:
            raise KeyError(f"unknown pillar {pillar!r}; pillars: {list(PILLARS)}")
        want_ids = None
        if ids is not None:
            for i in ids:
                self.get(i)
            want_ids = set(ids)
        out = []
        for p in self.prompts:
            if groups is not None and p.group not in groups:
                continue
            if pillar is not None and self.group_info[p.group].pillar != pillar:
                continue
            if want_ids is not None and p.id not in want_ids:
                continue
            out.append(p)
        return out


def available_banks() -> list[str]:
    """Names of the banks shipped under ``prompts/data``."""
    return sorted({p.name.split(".")[0] for p in DATA_DIR.glob("*.*.yaml")})


def _bank_files(name_or_path: str | Path) -> list[Path]:
    s = str(name_or_path)
    if s in available_banks():
        return sorted(DATA_DIR.glob(f"{s}.*.yaml"))
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        if not files:
            raise FileNotFoundError(f"no .yaml/.yml/.json bank files in {path}")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no bank {s!r}: not a shipped bank ({', '.join(available_banks())}) nor a file or folder")


def bank_identity(name_or_path: str | Path) -> str:
    """What a loaded bank depends on: its files' resolved paths and contents (a cache key: a relative path
    read from another directory, or an edited file, is another bank)."""
    files = _bank_files(name_or_path)
    return bank_version(files) + ":" + "|".join(str(Path(f).resolve()) for f in files)


def bank_version(files: Sequence[Path]) -> str:
    """sha256 over the files in name order (see the module docstring)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        data = Path(f).read_bytes()
        h.update(f.name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def load_bank(name_or_path: str | Path = "research") -> PromptBank:
    """Load and validate a bank: a shipped name (``"research"``,
    ``"stories"``), one bank file, or a folder of bank files."""
    files = _bank_files(name_or_path)
    bank_name: str | None = None
    groups: dict[str, GroupInfo] = {}
    prompts: list[Prompt] = []
    seen: dict[str, Path] = {}
    for path in files:
        spec, raw = _read_file(path)
        if bank_name is None:
            bank_name = spec.bank
        elif spec.bank != bank_name:
            raise BankError(path, "(file)", "bank", f"{spec.bank!r} differs from {bank_name!r} in the other files")
        for gname, g in spec.groups.items():
            if gname in groups:
                raise BankError(path, f"group {gname}", "(name)", f"group also defined in {groups[gname].file}")
            _check_group(path, raw, gname, g)
            level = g.level
            groups[gname] = GroupInfo(
                gname,
                g.pillar,
                g.description,
                path.name,
                level,
                g.min_words,
                g.max_words,
                g.requires_markers,
                g.length_variant_of,
            )
            for i, e in enumerate(g.prompts):
                if e.id in seen:
                    raise BankError(path, _entry_label(raw, gname, i), "id", f"duplicate id, also in {seen[e.id].name}")
                seen[e.id] = path
                markers = tuple(e.markers) if e.markers is not None else None
                answers = None if e.answer is None else (e.answer,) if isinstance(e.answer, str) else tuple(e.answer)
                meta = copy.deepcopy(e.meta)  # parsed once and shared: each bank gets its own
                prompts.append(Prompt(e.id, gname, e.text, level, markers, {"pillar": g.pillar, **meta}, answers))
    for g in groups.values():
        if g.length_variant_of and g.length_variant_of not in groups:
            raise BankError(g.file, f"group {g.name}", "length_variant_of", f"no group {g.length_variant_of!r}")
    return PromptBank(bank_name or "", prompts, groups, bank_version(files), files)
