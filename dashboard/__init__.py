"""slidemap.dashboard (the repository folder `dashboard/`, installed as a subpackage of slidemap)."""

if __name__ != "slidemap.dashboard":
    # Imported as a top-level `dashboard` (e.g. python run from the repo root): refuse, so that
    # numba's on-disk cache and pickled objects only ever see one module name.
    raise ImportError(f"import this package as slidemap.dashboard, not {__name__}")
