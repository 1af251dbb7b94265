"""Ready experiments shipped with the package (``configs/`` in the repository)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def presets_dir() -> Path:
    return Path(str(resources.files("transferlab") / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def preset_path(name: str) -> Path:
    """Path of preset ``name`` (``demo``, ``seed_n300``, ...); a name may end in .toml."""
    stem = Path(name).name.removesuffix(".toml")
    path = presets_dir() / f"{stem}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no preset {name!r}; presets: {', '.join(list_presets())}")
    return path
