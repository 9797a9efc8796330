"""The use cases, one subpackage per domain, in the order they may import each other:
kernel, audit, directory, access, vault, pki (a domain uses kernel and the domains before it)."""
