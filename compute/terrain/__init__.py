"""terrain: see docs/ARCHITECTURE.md."""
