"""Tools for running the gateway on a developer's machine and in the test suite."""
