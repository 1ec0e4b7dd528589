"""maps: see docs/ARCHITECTURE.md."""
