"""The built-in CA, issuance, CRLs and enrollment."""
