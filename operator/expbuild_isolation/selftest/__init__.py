"""``expbuild-isolation selftest``: the escape suite's harmless attacks, run against this machine's backends.

One attack list serves both the command and the test suite (``tests/isolation/test_escapes.py`` parametrizes
over ``catalog.ATTACKS``): each attack makes its own bounded workspace and host-side bait, runs a positive
control, judges from the host side (files, processes, connections, what the kernel and the executor report)
and leaves nothing behind. Whether a backend is expected to lose an attack is read from its
``capabilities()``, never from its name: a loss it does not claim to prevent is reported as expected, a loss
it claims is a failure.

A layer between ``cli`` and ``worker``: it builds executors through the worker's chain and imports nothing of
Kubernetes.
"""
