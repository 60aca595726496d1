"""Loopback mirrors of the real lunar archives (SOURCES.md §9), for the harvest tests."""
