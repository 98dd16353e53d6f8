"""The one exception type for mistakes a user can fix (bad file, bad flag, bad request)."""


class CodegemmaError(Exception):
    """A user-facing error: the message says what is wrong and where, in one line.

    The CLI prints it without a traceback and exits non-zero; the server turns it into a 4xx.
    """
