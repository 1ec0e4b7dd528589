"""slidemap.training (the repository folder `training/`, installed as a subpackage of slidemap)."""

if __name__ != "slidemap.training":
    # Imported as a top-level `training` (e.g. python run from the repo root): refuse, so that
    # numba's on-disk cache and pickled objects only ever see one module name.
    raise ImportError(f"import this package as slidemap.training, not {__name__}")
