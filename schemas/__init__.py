"""Data contracts of lunarchive: errors, JSON Schemas and the models that load them."""
