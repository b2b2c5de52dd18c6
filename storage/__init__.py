"""Persistence for one node: the SQL schema, sessions, migrations and the model registry."""
