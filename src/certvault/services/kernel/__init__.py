"""What every domain uses: ports, actors, paging, the keyring, mail, rate limits, tenancy."""

# Importing the services installs the row-seal checks on every session (seal_events.py).
from certvault.services.kernel import seal_events as _seal_events  # noqa: F401
