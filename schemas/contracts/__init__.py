"""JSON Schema (2020-12) files of lunarchive's data contracts, kept beside this module."""
