"""Connector SDK: sandbox, transports, atomic apply, verify, registry, conformance."""
