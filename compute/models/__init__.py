"""Model artefacts at run time: the store (cards, hashes, load order) and the choice of model.

``store`` writes and verifies artefact folders; ``select`` answers "which model?" -- by name, by
version hash, or the region's default (the best model with skill of the latest training run).
"""
