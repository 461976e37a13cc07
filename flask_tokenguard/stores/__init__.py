"""Shared stores for claims and published results."""
