"""The ``corral`` command line: one small module per verb, speaking HTTP to api.sock only."""
