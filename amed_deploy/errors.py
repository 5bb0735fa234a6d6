"""The one exception type the tool raises for bad input, so the CLI can print it as one line."""


class AmedError(Exception):
    """A user-facing error: bad file, mismatched configuration, unsupported option."""
