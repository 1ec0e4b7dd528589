"""slidemap: landslide inventory and susceptibility maps, served as tiles.

Subpackages: ``slidemap.compute`` (inputs, factors, kernels, block engine),
``slidemap.training`` (models and reports), ``slidemap.server`` (tile server)
and ``slidemap.dashboard`` (Streamlit app).
"""

__version__ = "0.1.0"

SYNTHETIC_LABEL = "SYNTHETIC"
