"""Per-test isolation: the outer transaction, sessions on it, the leak check, factories."""
