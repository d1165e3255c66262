import pytest

# The shared checks in these helpers (assert_matches_kernel above all) must
# say which field differed when they fail, as test modules' asserts do.
pytest.register_assert_rewrite("tests.integration.harness", "tests.integration.containers")

# A real PostgreSQL server, one per session, for the store tests.
from tests.postgres_server import postgres  # noqa: E402, F401
