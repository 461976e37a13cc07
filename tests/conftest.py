pytest_plugins = ["tests.fixtures.provider", "tests.fixtures.services", "tests.fixtures.apps", "tests.fixtures.gunicorn"]
