"""Ready experiments shipped with the package (``configs/`` in the repository)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..suggest import unknown


def presets_dir() -> Path:
    return Path(str(resources.files("transferlab") / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def preset_path(name: str) -> Path:
    """Path of preset ``name`` (``demo``, ``seed_n300``, ...); a name may end in .toml."""
    stem = Path(name).name.removesuffix(".toml")
    path = presets_dir() / f"{stem}.toml"
    if not path.is_file():
        raise FileNotFoundError(unknown("preset", name, list_presets()))
    return path


def preset_description(name: str) -> str:
    """The preset's own ``description`` (a whole sentence saying what it runs)."""
    import tomllib

    return str(tomllib.loads(preset_path(name).read_text(encoding="utf-8")).get("description", ""))
