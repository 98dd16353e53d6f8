"""The one exception type for mistakes a user can fix (bad file, bad flag, bad request)."""


class CodegemmaError(Exception):
    """A user-facing error: the message says what is wrong and where, in one line.

    The CLI prints it without a traceback and exits non-zero; the server turns it into a 4xx.
    """


def differences(there: dict, here: dict) -> str:
    """The settings in which two records differ, for a message: "key 1 there, 2 here; ..."."""
    return "; ".join(f"{k} {there.get(k)!r} there, {here.get(k)!r} here"
                     for k in sorted(set(there) | set(here)) if there.get(k) != here.get(k))
