"""Serving layer: Cassandra schema, batch/realtime views and the merged query API."""
