"""The node agent (DaemonSet): runs tasks placed on its node through the local executor chain."""
