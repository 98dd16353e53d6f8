"""TOML parsing: the standard library's `tomllib` from Python 3.11, on 3.10 the same parser from
PyPI (`tomli`, which became `tomllib`)."""

try:
    from tomllib import TOMLDecodeError, loads
except ModuleNotFoundError:  # Python 3.10
    from tomli import TOMLDecodeError, loads

__all__ = ["TOMLDecodeError", "loads"]
