"""merc: data_manifests/adapters."""
