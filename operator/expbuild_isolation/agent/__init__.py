"""The node agent: runs ExecutionTasks the operator places on its node through the local executor chain.

``expbuild-isolation agent --node NAME --config worker.toml --namespace NS``
(node defaults to ``$NODE_NAME``, which a DaemonSet sets from
``spec.nodeName`` through the downward API).

What it does (``agent.node.NodeAgent``):

- advertises itself with the Lease ``expbuild-agent-<node>`` in ``NS`` (the
  operator's namespace), renewed every few seconds: healthy executors, the
  isolation level of each, free slots, installed seccomp profiles
  (``kube.leases``);
- writes the project's seccomp profiles (``executors.seccomp.render_json``)
  into the kubelet's seccomp directory (default
  ``/var/lib/kubelet/seccomp/profiles``) and advertises them only once the
  files exist;
- finds tasks the operator placed on its node (label ``expbuild.io/node``,
  phase Scheduled), claims each by creating the Lease ``xt-claim-<task uid>``
  owned by the task (a 409 means another agent has it: a task never runs
  twice), and runs it with ``worker.local.run_task``, the same path as
  ``expbuild-isolation run``, so the status has the same shape as a local or
  Job run, with ``node`` = this node and ``executor`` = the backend that ran it.
  The executor's floor check (``executors.select``) never goes below
  ``spec.isolation.minimum``. Before running, ``agent.admission`` checks the
  task is what the operator placed here (``status.node``, the generation it
  placed) and within what the administrator allows: no host executor without
  ``--allow-host-executor``; Unconfined and floors below Container only for
  ``--weak-isolation-namespace``; no more cpu or memory than the node has. Then
  ``agent.tenancy`` judges it against the ExecutionPolicies as they are now
  (a task placed before a policy changed ends Error/PolicyViolation, or
  Error/UntrustedImage for an image without a trusted signature) and
  raises its floor where a policy says so;
  ConfigMap inputs are fetched from the task's own namespace into memory;
- patches the status (Running, then the final phase with reason, exitCode,
  stats, outputs, logs) and posts Events;
- on start, ends tasks it had claimed that are still unfinished with reason
  AgentRestarted: their processes died with the previous agent, and running
  them again could repeat side effects.

What the DaemonSet needs, and why:

- **root with CAP_SYS_ADMIN and CAP_NET_ADMIN added to a container runtime's
  defaults**, seccomp and AppArmor Unconfined (or simply privileged) for the
  namespace executor: SYS_ADMIN creates the mount, PID, network, UTS, IPC and
  cgroup namespaces and mounts the sandbox's root (the runtimes' default
  seccomp and AppArmor profiles refuse pivot_root and mount); NET_ADMIN brings
  up a task's loopback (network Localhost). CAP_SYS_NICE and CAP_SYS_RESOURCE
  are not needed. The host's cgroup tree must be writable (mount
  ``/sys/fs/cgroup`` read-write); ``hostPID`` is not needed.
  ``tests/executors/test_namespace_privileges.py`` runs the executor with just
  these capabilities. With only the docker or podman executor, the
  Docker/Podman socket (hostPath ``/var/run/docker.sock``) instead: whoever
  holds that socket is root on the node, which is why it is the agent, never a
  task, that holds it;
- hostPath ``<kubelet root>/seccomp`` (read-write; the chart's
  ``kubeletRootDir``, ``/var/lib/kubelet`` by default) to install the profiles
  that Jobs refer to as ``Localhost profiles/expbuild-*.json``;
- a ServiceAccount allowed only to: get/list/watch/patch ``executiontasks`` and
  ``executiontasks/status`` (cluster-wide, or per namespace with
  ``--task-namespace``); create/get/patch/update ``leases`` (its own in ``NS``,
  claims in task namespaces); create ``events``; get ``configmaps`` for
  ConfigMap inputs; list ``executionpolicies`` and get ``namespaces``;
- ``NODE_NAME`` from the downward API, a liveness probe on ``/healthz`` and a
  scrape of ``/metrics`` (``--metrics-port``, default 8081).

Tasks never see the agent's credentials: the executors pass the task only the
environment it declares (plus PATH/HOME defaults), and run it in its own mount
namespace (or container). The namespace executor's root is a fresh tmpfs
holding read-only binds of /usr, /bin, /sbin, /lib* and a minimal /etc
(``executors.namespace.sandbox_root.HOST_DIRS``) even with ``rootfs = "host"``, so
``/var/run/secrets/kubernetes.io/serviceaccount`` (mounted into the agent's
own container) is not in the sandbox; a container backend starts from the
task's image. ``tests/agent`` checks the token path is absent inside a task.

The agent watches its tasks: per task namespace (or cluster-wide, the same
scopes it lists), a filtered list and then a watch from that list's
resourceVersion, so a task placed on the node starts at once. Whatever ends a
watch (the server's ``timeoutSeconds``, 410 Gone, a dropped connection) is
followed by a fresh list and a new watch, backing off only when watches keep
ending quickly. Under the watches, a full list every ``poll_seconds``
(``--poll-seconds``, default 30: the resync interval) and whenever a slot frees
while a placed task waits is the safety net. Events may repeat or arrive late:
the claim Lease, not the agent's memory, is what keeps a task from running twice.
"""
