"""Accounts, persons and certificates: who and what the vault holds keys for."""
