"""Measurements that prove what a compression gained and lost."""
