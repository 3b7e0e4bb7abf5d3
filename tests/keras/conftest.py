"""Shared pytest configuration of the Keras tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backend_matrix: backend-agnostic Keras test, also run on the torch and jax backends "
        "(tests/keras/test_clustering_backends.py runs them in subprocesses)",
    )
