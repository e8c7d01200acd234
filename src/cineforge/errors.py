"""The one exception type for errors a user can cause.

Its message names the problem and the fix; the CLI prints it on one line and exits with 2.
"""


class CineforgeError(ValueError):
    """Bad input, unknown preset, missing or corrupt weights: something the user can fix."""
