"""What every domain uses: ports, actors, paging, the keyring, mail, rate limits, tenancy."""
