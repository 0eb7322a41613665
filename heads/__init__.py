"""merc: heads."""
