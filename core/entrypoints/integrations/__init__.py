"""Integrations with distributed engines (Ray Data)."""
