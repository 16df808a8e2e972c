pytest_plugins = ["tests.chain.conftest_backends"]
