"""The strategy comparison: run directories to tables, CSV/JSON and plots."""
