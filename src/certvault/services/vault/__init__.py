"""The vault: the one way in (archive, import), the one way out (release), verification,
custody, Key Vault settings."""
