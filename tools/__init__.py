"""merc: tools."""
