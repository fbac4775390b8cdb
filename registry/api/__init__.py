"""The HTTP API of `adreg serve` (FastAPI)."""
