"""e2e tests reuse the integration fixtures: random-weight checkpoints and real server processes."""

from tests.integration.conftest import checkpoints  # noqa: F401 (a fixture)
