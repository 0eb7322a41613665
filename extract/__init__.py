"""merc: extract."""
