"""The one exception type for errors a user can cause.

Its message names the problem and the fix, in the library's words. A request field or
argument the message names is written ``{steps}`` in the message and listed in ``fields``:
``str(error)`` shows it as the field name (``steps must be at least 1``), and a shell over
the library can show it its own way (the CLI: ``--steps must be at least 1``). The CLI prints
the message on one line and exits with 2.
"""

from __future__ import annotations

from collections.abc import Callable


class CineforgeError(ValueError):
    """Bad input, unknown preset, missing or corrupt weights: something the user can fix."""

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        self.template, self.fields = message, tuple(fields)
        super().__init__(self.renamed(lambda f: f))

    def renamed(self, name: Callable[[str], str]) -> str:
        """The message with each ``{field}`` of ``fields`` written as ``name(field)``."""
        message = self.template
        for f in self.fields:
            message = message.replace("{" + f + "}", name(f))
        return message
