"""Kubernetes RBAC, as the API server evaluates it, for the install tests.

``permission_of(method, path, params)`` turns a recorded HTTP request into
what the authorizer asks (the apiserver's RequestInfo: verb, group,
resource[/subresource], namespace, name); ``Authorizer(objects)`` answers
whether a service account may do it, from the Roles, ClusterRoles and their
bindings of a rendered chart plus the cluster's bootstrap discovery role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The apiserver's namespace subresources: /api/v1/namespaces/<ns>/status is the namespace's, not a resource in it.
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}

# Bootstrap policy every cluster has (system:discovery bound to system:authenticated): discovery is not ours.
BOOTSTRAP: list[dict[str, Any]] = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:discovery"},
     "rules": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz",
                                    "/openapi", "/openapi/*", "/version", "/version/"], "verbs": ["get"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "system:discovery"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:discovery"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]},
]


@dataclass(frozen=True)
class Permission:
    """One authorization question. ``namespace`` None: cluster-scoped (or across all namespaces)."""

    verb: str
    group: str = ""
    resource: str = ""           # "pods", "pods/log"; empty for a non-resource URL
    namespace: str | None = None
    name: str = ""
    path: str = ""               # only for non-resource URLs (discovery)

    @property
    def is_resource(self) -> bool:
        return not self.path

    def without_name(self) -> Permission:
        return Permission(self.verb, self.group, self.resource, self.namespace, "", self.path)

    def __str__(self) -> str:
        if not self.is_resource:
            return f"{self.verb} {self.path}"
        where = f"in {self.namespace}" if self.namespace else "cluster-wide"
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource}{named} {where}"


def permission_of(method: str, path: str, params: dict[str, str] | None = None) -> Permission:
    """What the apiserver's authorizer is asked for this request (k8s.io/apiserver RequestInfoFactory)."""
    params = params or {}
    parts = [part for part in path.strip("/").split("/") if part]
    method = method.upper()
    if not parts or parts[0] not in ("api", "apis"):
        return Permission(method.lower(), path=path)
    prefix = 2 if parts[0] == "api" else 3  # /api/v1 or /apis/<group>/<version>
    if len(parts) <= prefix:
        return Permission(method.lower(), path=path)  # discovery
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[prefix:]
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
        # else: the namespace object itself (/namespaces/<ns>[/status]): resource "namespaces", name <ns>
    resource, name = rest[0], rest[1] if len(rest) > 1 else ""
    if resource == "namespaces" and name:
        namespace = None  # a Namespace is cluster-scoped; the apiserver sets namespace = name, RBAC-wise the same
    subresource = rest[2] if len(rest) > 2 else ""
    watch = watch_path or params.get("watch", "").lower() in ("true", "1")
    if method == "GET":
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "HEAD": "get"}.get(method, method.lower())
    return Permission(verb, group, f"{resource}/{subresource}" if subresource else resource, namespace, name)


def _matches(values: list[str] | None, value: str) -> bool:
    return bool(values) and ("*" in values or value in values)


def _resource_matches(resources: list[str] | None, resource: str) -> bool:
    if not resources:
        return False
    base, _, sub = resource.partition("/")
    return ("*" in resources or resource in resources
            or bool(sub) and (f"*/{sub}" in resources or f"{base}/*" in resources))


def rule_allows(rule: dict[str, Any], permission: Permission) -> bool:
    """One PolicyRule against one request, as the apiserver's RBAC authorizer matches them."""
    if not _matches(rule.get("verbs"), permission.verb):
        return False
    if not permission.is_resource:
        urls = rule.get("nonResourceURLs") or []
        return any(url == "*" or url == permission.path or (url.endswith("*") and permission.path.startswith(url[:-1]))
                   for url in urls)
    if not _matches(rule.get("apiGroups"), permission.group):
        return False
    if not _resource_matches(rule.get("resources"), permission.resource):
        return False
    names = rule.get("resourceNames") or []
    return not names or permission.name in names


@dataclass(frozen=True)
class Grant:
    """A rule in force for a subject: everywhere (``namespace`` None) or in one namespace."""

    role: str       # "ClusterRole/x" or "Role/ns/x"
    binding: str
    rule_index: int
    rule: Any       # the PolicyRule dict (compared by identity)
    namespace: str | None

    def allows(self, permission: Permission) -> bool:
        if self.namespace is not None and permission.namespace != self.namespace:
            return False
        return rule_allows(self.rule, permission)

    def __str__(self) -> str:
        rule = {k: v for k, v in self.rule.items() if v}
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.role}[{self.rule_index}]{where} (via {self.binding}): {rule}"


def _subject_is(subject: dict[str, Any], account: str, namespace: str, binding_namespace: str | None) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return name == account and (subject.get("namespace") or binding_namespace) == namespace
    if kind == "Group":
        return name in ("system:authenticated", "system:serviceaccounts", f"system:serviceaccounts:{namespace}")
    if kind == "User":
        return name == f"system:serviceaccount:{namespace}:{account}"
    return False


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


class Authorizer:
    """RBAC over a set of rendered objects (plus ``BOOTSTRAP``)."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = [*BOOTSTRAP, *objects]
        self.cluster_roles = {o["metadata"]["name"]: o for o in self.objects if o.get("kind") == "ClusterRole"}
        self.roles = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
                      for o in self.objects if o.get("kind") == "Role"}

    def _rules(self, role: dict[str, Any]) -> list[dict[str, Any]]:
        aggregation = role.get("aggregationRule")
        if not aggregation:
            return list(role.get("rules") or [])
        return [rule for other in self.cluster_roles.values() if other is not role
                if any(_labels_match(sel, other["metadata"].get("labels") or {})
                       for sel in aggregation.get("clusterRoleSelectors") or [])
                for rule in other.get("rules") or []]

    def grants(self, account: str, namespace: str) -> list[Grant]:
        """Every rule bound to the service account ``namespace/account``, with where it applies."""
        found = []
        for binding in self.objects:
            kind = binding.get("kind")
            if kind not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            bound_in = binding["metadata"].get("namespace") if kind == "RoleBinding" else None
            if not any(_subject_is(s, account, namespace, bound_in) for s in binding.get("subjects") or []):
                continue
            ref = binding["roleRef"]
            if ref["kind"] == "ClusterRole":
                role, label = self.cluster_roles.get(ref["name"]), f"ClusterRole/{ref['name']}"
            elif kind == "RoleBinding":
                role, label = self.roles.get((bound_in, ref["name"])), f"Role/{bound_in}/{ref['name']}"
            else:
                role, label = None, ""  # a ClusterRoleBinding cannot reference a Role
            if role is None:
                continue
            where = f"{kind}/{bound_in + '/' if bound_in else ''}{binding['metadata']['name']}"
            found += [Grant(label, where, i, rule, bound_in) for i, rule in enumerate(self._rules(role))]
        return found

    def chart_grants(self, account: str, namespace: str) -> list[Grant]:
        """The grants that come from the rendered objects, not from the cluster's bootstrap policy."""
        bootstrap = {f"ClusterRole/{o['metadata']['name']}" for o in BOOTSTRAP if o["kind"] == "ClusterRole"}
        return [grant for grant in self.grants(account, namespace) if grant.role not in bootstrap]

    def allowed(self, account: str, namespace: str, permission: Permission) -> bool:
        return any(grant.allows(permission) for grant in self.grants(account, namespace))

    def denied(self, account: str, namespace: str, permissions: set[Permission]) -> list[Permission]:
        grants = self.grants(account, namespace)
        return sorted((p for p in permissions if not any(g.allows(p) for g in grants)), key=str)

    def unused(self, account: str, namespace: str, permissions: set[Permission]) -> list[tuple[Grant, str, str]]:
        """(grant, verb, resource) pairs granted but used by none of ``permissions``.

        A rule is split into its verb x group/resource cells so that one used
        verb does not hide an unused one beside it; the bootstrap discovery
        role is not ours and is left out.
        """
        unused = []
        for grant in self.chart_grants(account, namespace):
            rule = grant.rule
            cells = [(verb, f"{group or 'core'}/{resource}") for verb in rule.get("verbs") or []
                     for group in rule.get("apiGroups") or [""] for resource in rule.get("resources") or []]
            cells += [(verb, url) for verb in rule.get("verbs") or [] for url in rule.get("nonResourceURLs") or []]
            for verb, what in cells:
                cell = dict(rule, verbs=[verb])
                if "/" in what and rule.get("resources"):
                    group, resource = what.split("/", 1)
                    cell = dict(cell, apiGroups=["" if group == "core" else group], resources=[resource])
                if not any(Grant(grant.role, grant.binding, grant.rule_index, cell, grant.namespace).allows(p)
                           for p in permissions):
                    unused.append((grant, verb, what))
        return unused
