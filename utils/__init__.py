"""Small command-line utilities for adstats (sample-data generation, ...)."""
