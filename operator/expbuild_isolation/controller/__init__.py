"""The operator: kopf handlers (``handlers``), every API call (``cluster``), the entry point (``run``)."""
