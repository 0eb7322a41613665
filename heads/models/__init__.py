"""Head models: one module per published model, plus baselines. See heads/registry.py."""
