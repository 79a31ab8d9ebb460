"""expbuild-isolation: hardened execution of untrusted build and test commands."""

__version__ = "0.1.0"
