"""Run configs, run folders, the selector evaluation harness, tables and plots."""
