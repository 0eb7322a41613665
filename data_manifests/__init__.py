"""merc: data_manifests."""
