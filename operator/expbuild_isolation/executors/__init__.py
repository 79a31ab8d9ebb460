"""The executor contract (``base``) and its backends, one module each."""
