"""slidemap.compute (the repository folder `compute/`, installed as a subpackage of slidemap)."""

if __name__ != "slidemap.compute":
    # Imported as a top-level `compute` (e.g. python run from the repo root): refuse, so that
    # numba's on-disk cache and pickled objects only ever see one module name.
    raise ImportError(f"import this package as slidemap.compute, not {__name__}")
