"""lunarchive.flows."""
