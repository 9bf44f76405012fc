"""A small memory-search API on PostgreSQL + pgvector."""


def __getattr__(name: str) -> str:
    # The version is looked up on first use only: the container healthcheck imports this
    # package several times a second and must stay cheap.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("memories")
        except PackageNotFoundError:  # A source tree that was never installed.
            return "0+unknown"
    raise AttributeError(name)
