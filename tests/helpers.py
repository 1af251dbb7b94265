"""Small helpers shared by the CLI, runner and executor tests."""

from transferlab.experiments.store import RunStore


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def nows(text: str) -> str:
    """Output without any whitespace (rich may wrap a long path anywhere)."""
    return "".join(text.split())


def demo_conditions() -> int:
    """How many conditions the demo preset has (tests derive their counts from it)."""
    from transferlab.experiments import load_config

    return len(load_config("stories").conditions)


DEMO_CONDITIONS = demo_conditions()


class AppendSpy:
    """Records every unit the run store is asked to write (to prove nothing is computed twice)."""

    def __init__(self, monkeypatch):
        self.units: list[str] = []
        original = RunStore.append

        def append(store, rows):
            self.units.extend(r["unit"] for r in rows)
            return original(store, rows)

        monkeypatch.setattr(RunStore, "append", append)


def stored_results(run_dir):
    """The results table of a run directory's store."""
    from pathlib import Path

    store = RunStore(Path(run_dir) / "store.sqlite")
    try:
        return store.results()
    finally:
        store.close()
