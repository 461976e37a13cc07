"""Fixtures live in tests/fixtures/, one module per real part; this loads them."""

pytest_plugins = [
    "tests.fixtures.provider",
    "tests.fixtures.services",
    "tests.fixtures.apps",
    "tests.fixtures.gunicorn",
]
