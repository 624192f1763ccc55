"""certgit.connectors: connector SDK and one module per target kind."""
