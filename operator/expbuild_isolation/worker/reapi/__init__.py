"""The Remote Execution API worker: takes actions from a REAPI server's Bots queue (BuildGrid, or any server
speaking the Remote Workers API), runs each through the executor chain and uploads the results.

``worker`` is the bot's loop (leases, capacity, shutdown), ``runner`` one action from lease to result,
``action`` an Action + Command -> an ``ExecutionRequest`` (platform properties, limits, the isolation floor),
``tree`` input trees in and output trees out, ``cas`` the local cache and the remote CAS, ``protos`` the
generated protocol modules (from ``buildgrid-common``).

Only the command line (``cli``) starts it; nothing else in the package imports it (import-linter says so).
"""
