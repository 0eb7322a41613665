"""merc: heads/models."""
