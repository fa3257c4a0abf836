"""HTTP: the session-aware base handlers, then one module per API area."""
