"""Where artifacts live: the local store (store.py), remote caches (remote.py), content digests (digest.py)."""
