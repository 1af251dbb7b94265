"""Small helpers shared by the CLI and runner tests."""


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def nows(text: str) -> str:
    """Output without any whitespace (rich may wrap a long path anywhere)."""
    return "".join(text.split())


def demo_conditions() -> int:
    """How many conditions the demo preset has (tests derive their counts from it)."""
    from transferlab.experiments import load_config

    return len(load_config("demo").conditions)


DEMO_CONDITIONS = demo_conditions()
