"""demo: see docs/ARCHITECTURE.md."""
