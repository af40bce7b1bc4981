"""App test fixtures: `cdra_main` (`cdra` through its real entry point in this process) lives in tests/conftest.py."""
