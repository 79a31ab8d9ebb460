"""Pure Kubernetes knowledge: a task in, manifests and status patches out.

Nothing here talks to an API server or imports a client; ``controller`` does
the talking. Modules: ``config`` (operator settings from EXPBUILD_* variables),
``render`` (Job, pod, ConfigMap), ``network`` (NetworkPolicy), ``supervisor``
(the in-pod result collector), ``results`` (parsing what it reports),
``status`` (Job + Pod -> task status), ``restricted`` (Pod Security Standards
check).
"""
