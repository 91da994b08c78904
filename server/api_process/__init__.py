"""The API processes (`python -m server.api_process`): HTTP, validation, encoding; no torch (a test reads
/proc/PID/maps to check, and an import-linter contract in pyproject.toml keeps it so)."""
