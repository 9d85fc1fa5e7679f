"""Flywheel's ground floor: event contracts, the topic registry, ClickHouse DDL and shared settings.

Nothing here imports another Flywheel package; every other package may import this one.
"""
