"""Datasets (dict samples), image transforms and seeded batch loading."""
