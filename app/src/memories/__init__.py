"""A small memory-search API on PostgreSQL + pgvector."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memories")
except PackageNotFoundError:  # Running from a source tree that was never installed.
    __version__ = "0+unknown"
