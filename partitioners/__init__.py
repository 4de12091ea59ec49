"""Partitioning algorithms: support matrix, assignment policies, cycle-free growth."""
