"""Small helpers shared by the CLI, runner and executor tests."""

from transferlab.experiments.store import RunStore


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def nows(text: str) -> str:
    """Output without any whitespace (rich may wrap a long path anywhere)."""
    return "".join(text.split())


BOX_VERTICALS = "│┃║"


def table_columns(text: str) -> list[str]:
    """A rich table's columns as text, whatever the width it was drawn at: column ``i`` is every fragment
    between the box's vertical lines at position ``i``, in order, without whitespace (a cell folded over
    several lines reads whole). Lines without vertical lines (titles, other output) are left out."""
    columns: list[list[str]] = []
    for line in text.splitlines():
        if not any(v in line for v in BOX_VERTICALS):
            continue
        for v in BOX_VERTICALS[1:]:
            line = line.replace(v, BOX_VERTICALS[0])
        cells = line.split(BOX_VERTICALS[0])[1:-1]
        while len(columns) < len(cells):
            columns.append([])
        for i, cell in enumerate(cells):
            columns[i].append(nows(cell))
    return ["".join(c) for c in columns]


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
