"""PKCS#12 in and out.

``reader``: our own reader, with KDF cost ceilings (``limits``) checked on the file's structure
(``pfx``) before any KDF runs. ``writer``: an export whose MAC is as strong as its encryption.
``pbe``: the password-based encryption both use.
"""
