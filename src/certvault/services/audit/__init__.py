"""The audit log: MAC chains per account, and the witness kept outside the database."""
