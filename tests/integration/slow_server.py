"""`python tests/integration/slow_server.py [flags]`: the real server with the test-only "slow" engine."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engines.base import ENGINES  # noqa: E402

ENGINES["slow"] = "slow_engine:SlowEngine"

from server.main import main  # noqa: E402

sys.exit(main())
