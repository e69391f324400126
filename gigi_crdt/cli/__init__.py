"""The ``gigi-crdt`` command line."""
