"""Certificate issuers: local CA now, ACME later."""
