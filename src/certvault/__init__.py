"""certvault: a self-hosted key escrow vault for the private keys of client certificates."""

__version__ = "0.1.0"
