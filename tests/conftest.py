"""Fixtures live in tests/fixtures/, one module per real part; this loads them.

Hypothesis runs a bounded profile in CI (``HYPOTHESIS_PROFILE=ci``, set by .ci/run).
"""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.fixtures.provider",
    "tests.fixtures.services",
    "tests.fixtures.apps",
    "tests.fixtures.gunicorn",
    "tests.fixtures.oidc_provider",
    "tests.fixtures.databases",
]

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
