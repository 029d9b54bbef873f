"""The one user-facing error type: a single line naming the problem."""


class ImgenError(Exception):
    """An error meant for the user: one line that names the file, field or value at fault.

    The CLI prints `error: <message>` and exits with status 2 instead of a traceback.
    """
