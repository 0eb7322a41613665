"""merc: extract/encoders."""
