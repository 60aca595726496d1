"""lunarchive.catalog."""
