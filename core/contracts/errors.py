"""The error types poolkit raises for things a user can fix.

Every error is a :class:`PoolkitError` with a one-line message that names the object at fault
and, where there is one, the way out. The CLI prints it as ``Error: <message>`` and exits 1;
the server maps it to a 4xx response.
"""

from __future__ import annotations


class PoolkitError(Exception):
    """Root of every error poolkit raises on purpose."""


class PluginError(PoolkitError):
    """A plugin could not be loaded, or registered something invalid or clashing."""


class ModelLoadError(PoolkitError):
    """A model could not be found, read or built."""


class InvalidRequest(PoolkitError, ValueError):
    """The inputs or parameters of a call are not acceptable.

    Args:
        message: one line that names the input at fault.
        param: the request field at fault, where the input came from a request (the server's error
            body names it).
        status: the HTTP status a server answers with: 400, or 413 for inputs too large together.
    """

    def __init__(self, message: str = "", *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class InputTooLong(InvalidRequest):
    """An input has more tokens than the model takes, and truncation was not asked for; said in
    vLLM's words, which an API with other words rewords from the fields.

    Args:
        limit: the model's limit; ``given``: the input's tokens; ``index``: its place in the call.
    """

    def __init__(self, *, limit: int, given: int, index: int) -> None:
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, input {index} has more tokens than "
            "that. Please reduce the length of the input prompt (or set truncate_prompt_tokens: -1 truncates it to "
            "the model's limit)."
        )
        self.limit = limit
        self.given = given
        self.index = index

    def at(self, index: int) -> InputTooLong:
        """The same refusal of the input at ``index`` of a larger call (a run of some of its inputs)."""
        return InputTooLong(limit=self.limit, given=self.given, index=index)


class MissingDependency(PoolkitError, ImportError):
    """An optional dependency (an extra) is needed for what was asked."""


class UnknownName(PoolkitError, LookupError):
    """A name that no registry holds (pooler, activation, task, architecture, ...).

    A ``LookupError`` rather than a ``KeyError``, so the message prints without quotes.
    """


def short(value: object, width: int = 80) -> str:
    """``value`` as text of at most ``width`` characters, for quoting a user's input in a message."""
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."
