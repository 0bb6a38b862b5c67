"""A run's life: build (config becomes objects), the run directory, resume, guards, progress, the record."""
