"""merc: pipelines."""
