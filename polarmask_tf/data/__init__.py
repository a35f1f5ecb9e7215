"""Data: datasets, readers and input pipelines."""
