"""Small helpers shared by the CLI and runner tests."""


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def nows(text: str) -> str:
    """Output without any whitespace (rich may wrap a long path anywhere)."""
    return "".join(text.split())
