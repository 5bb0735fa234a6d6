"""The one exception type the tool raises for bad input, so the CLI can print it as one line."""


class AmedError(Exception):
    """A user-facing error: bad file, mismatched configuration, unsupported option."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """An exception's message, first line only (at most `limit` characters), for one-line errors."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if limit is None else line[:limit]


def short_repr(value: object) -> str:
    """A short repr for messages (a hostile file may put a huge value in a field)."""
    try:
        text = repr(value)
    except ValueError:  # an int over Python's 4300-digit str limit
        return "a very large integer"
    return text if len(text) <= 40 else text[:37] + "..."
