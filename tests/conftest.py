pytest_plugins = ["tests.fixtures.provider", "tests.fixtures.services", "tests.fixtures.apps"]
