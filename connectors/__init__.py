"""Connector plugins: one module a source type, all on `connectors.base`."""
