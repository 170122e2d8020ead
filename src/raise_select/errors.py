"""User-facing errors.

Every failure a user can cause (bad file, missing field, empty pool, unknown model, budget too
small) raises :class:`UserError` with ONE line that names the problem and the fix. The CLI prints
it as ``error: <message>`` and exits with status 2; nothing already written is touched.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line: what is wrong, and how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
