"""Tests of the torch-free runtime alone (see conftest.py). A package, so that its
conftest is imported as runtime_only.conftest and never stands in for tests/conftest.py."""
