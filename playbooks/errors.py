"""The controller's one error for bad input and refused operations (exit 1 at the CLI).

Its own module so that every workflow module can raise it without importing another
(operate used to import it from the executor, which imported operate back).
"""

from __future__ import annotations


class RolloutError(Exception):
    """What the operator asked cannot be done as asked; the text is the one line they read."""
