"""region: see docs/ARCHITECTURE.md."""
