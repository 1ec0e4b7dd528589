"""slidemap.server (the repository folder `server/`, installed as a subpackage of slidemap)."""

if __name__ != "slidemap.server":
    # Imported as a top-level `server` (e.g. python run from the repo root): refuse, so that
    # numba's on-disk cache and pickled objects only ever see one module name.
    raise ImportError(f"import this package as slidemap.server, not {__name__}")
