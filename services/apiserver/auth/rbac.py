"""RBAC: Roles and ClusterRoles granted by RoleBindings and ClusterRoleBindings.

Kubernetes' RBAC authorizer (plugin/pkg/auth/authorizer/rbac): a request is allowed
when a rule of a role bound to the caller matches its verb, API group, resource (with
subresource) and object name. ClusterRoleBindings grant everywhere; a RoleBinding grants
in its own namespace, whether it names a Role there or a ClusterRole. RBAC only ever
allows: a request no rule matches gets NO_OPINION, so that a later authorizer may still
allow it (Kubernetes' union). Members of `system:masters` are allowed everything, as
Kubernetes' privileged-group authorizer does ahead of RBAC.

Nothing is read from etcd per call. The four RBAC kinds' watch caches are turned into an
index by subject (user name, group name, each per namespace for RoleBindings), rebuilt
lazily on the first call after any of those caches changes; a call then costs the rules
of the caller's own bindings, not of every binding.

The admission half is RBAC's privilege-escalation prevention (pkg/registry/rbac/*/
policybased): a caller may write a role only with rules it already holds, and bind a
role only when it holds the role's rules where the binding applies, unless it is
explicitly allowed to (verbs "escalate" and "bind").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import grpc

from services.common.identity import SYSTEM_MASTERS, UserInfo
from services.common.log import get_logger
from services.common.resources import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, RBAC_KINDS, ROLE_BINDINGS, ROLES
from services.common.validation import RBAC_API_GROUP

from ..errors import ApiError
from ..registry import Registry
from .admission import CREATE, UPDATE, AdmissionPlugin, AdmissionRequest
from .attributes import Authorizer, Decision, RequestAttributes, Verdict

log = get_logger()

VERB_ALL = API_GROUP_ALL = RESOURCE_ALL = NON_RESOURCE_ALL = "*"
USER_KIND, GROUP_KIND, SERVICE_ACCOUNT_KIND = "User", "Group", "ServiceAccount"
SERVICE_ACCOUNT_USER_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
# The verbs that let a caller past the escalation check (Kubernetes' names).
ESCALATE_VERB, BIND_VERB = "escalate", "bind"
_RBAC_KIND_NAMES = frozenset(kind.name for kind in RBAC_KINDS)
# Bounds the per-caller memo of resolved grants; it is dropped whole when full or stale.
_GRANTS_MEMO_SIZE = 4096


def service_account_username(namespace: str, name: str) -> str:
    """The user a service account authenticates as: `system:serviceaccount:<ns>:<name>`."""
    return f"{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}"


def service_account_groups(namespace: str) -> tuple[str, str]:
    """The groups an authenticator gives a service account (the authorizer adds none)."""
    return SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}"


# -- rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One PolicyRule with its lists as sets, so that matching a field is one lookup."""

    verbs: frozenset[str]
    api_groups: frozenset[str]
    resources: frozenset[str]
    resource_names: frozenset[str]
    non_resource_urls: tuple[str, ...]

    @classmethod
    def of(cls, rule: Any) -> Rule:
        """From a rbac_pb2.PolicyRule (or anything with the same fields)."""
        return cls(
            frozenset(rule.verbs),
            frozenset(rule.api_groups),
            frozenset(rule.resources),
            frozenset(rule.resource_names),
            tuple(rule.non_resource_urls),
        )

    def allows(self, attributes: RequestAttributes) -> bool:
        return rule_allows(attributes, self)


# Kubernetes' evaluation helpers (pkg/apis/rbac/v1/evaluation_helpers.go), one per field.


def verb_matches(rule: Rule, verb: str) -> bool:
    return VERB_ALL in rule.verbs or verb in rule.verbs


def api_group_matches(rule: Rule, group: str) -> bool:
    return API_GROUP_ALL in rule.api_groups or group in rule.api_groups


def resource_matches(rule: Rule, combined_resource: str, subresource: str) -> bool:
    """Any resource ("*"), the exact one ("pods", "pods/log"), or "*/log" for every resource's
    log. A rule for "pods/*" matches only a request for that literal subresource, as in
    Kubernetes (only the escalation check reads "pods/*" as every subresource of pods)."""
    resources = rule.resources
    if RESOURCE_ALL in resources or combined_resource in resources:
        return True
    return bool(subresource) and f"{RESOURCE_ALL}/{subresource}" in resources


def resource_name_matches(rule: Rule, name: str) -> bool:
    """A rule without resourceNames covers every object; one with them, only those named
    (so never a list, a watch or a create, which name no object)."""
    return not rule.resource_names or name in rule.resource_names


def non_resource_url_matches(rule: Rule, url: str) -> bool:
    for rule_url in rule.non_resource_urls:
        if rule_url in (NON_RESOURCE_ALL, url):
            return True
        if rule_url.endswith("*") and url.startswith(rule_url.rstrip("*")):
            return True
    return False


def rule_allows(attributes: RequestAttributes, rule: Rule) -> bool:
    """Kubernetes' RuleAllows for a resource request."""
    subresource = attributes.subresource
    combined = f"{attributes.resource}/{subresource}" if subresource else attributes.resource
    return (
        verb_matches(rule, attributes.verb)
        and api_group_matches(rule, attributes.api_group)
        and resource_matches(rule, combined, subresource)
        and resource_name_matches(rule, attributes.name)
    )


# Kubernetes' policy comparator (component-helpers/auth/rbac/validation): whether some
# rules cover others, atom by atom. Used to reconcile the bootstrap roles and for the
# non-resource URLs of the escalation check.


@dataclass(frozen=True, slots=True)
class AtomicRule:
    """One verb on one resource (or non-resource URL) of one API group, at most one name."""

    verb: str
    api_group: str = ""
    resource: str = ""
    resource_name: str = ""
    non_resource_url: str = ""


def breakdown(rule: Any) -> list[AtomicRule]:
    """A PolicyRule (or Rule) as the atoms it allows, in Kubernetes' order."""
    atoms = [
        AtomicRule(verb, group, resource, name)
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
        for name in (rule.resource_names or ("",))
    ]
    atoms += [AtomicRule(verb, non_resource_url=url) for url in rule.non_resource_urls for verb in rule.verbs]
    return atoms


def _resource_covers(owner: Rule, resource: str) -> bool:
    if RESOURCE_ALL in owner.resources or resource in owner.resources:
        return True
    parent, slash, _ = resource.partition("/")
    return bool(slash) and f"{parent}/*" in owner.resources


def _non_resource_url_covers(owner_url: str, url: str) -> bool:
    return owner_url == url or (owner_url.endswith("*") and url.startswith(owner_url.rstrip("*")))


def rule_covers(owner: Rule, atom: AtomicRule) -> bool:
    if not (VERB_ALL in owner.verbs or atom.verb in owner.verbs):
        return False
    if atom.non_resource_url:
        return not owner.resource_names and any(
            _non_resource_url_covers(url, atom.non_resource_url) for url in owner.non_resource_urls
        )
    if not (API_GROUP_ALL in owner.api_groups or atom.api_group in owner.api_groups):
        return False
    if not _resource_covers(owner, atom.resource):
        return False
    if owner.resource_names:
        return bool(atom.resource_name) and atom.resource_name in owner.resource_names
    return True


def covers(owner_rules: Iterable[Rule], rules: Iterable[Any]) -> tuple[bool, list[AtomicRule]]:
    """Whether owner_rules allow everything rules do, and the atoms they do not."""
    owners = list(owner_rules)
    missing = [
        atom for rule in rules for atom in breakdown(rule) if not any(rule_covers(owner, atom) for owner in owners)
    ]
    return not missing, missing


def _go_strings(values: Iterable[str]) -> str:
    """A list of strings as Go's %q prints a []string: ["a" "b"]."""
    return "[" + " ".join(f'"{value}"' for value in values) + "]"


def describe_atoms(atoms: Sequence[AtomicRule]) -> list[str]:
    """Missing permissions as Kubernetes' escalation error lists them (CompactString after
    CompactRules: the verbs on one resource of one group merged), sorted."""
    verbs_by_target: dict[tuple[str, str, str, str], list[str]] = {}
    for atom in atoms:
        key = (atom.api_group, atom.resource, atom.resource_name, atom.non_resource_url)
        verbs = verbs_by_target.setdefault(key, [])
        if atom.verb not in verbs:
            verbs.append(atom.verb)
    lines = []
    for (group, resource, name, url), verbs in verbs_by_target.items():
        if url:
            parts = [f"NonResourceURLs:{_go_strings([url])}"]
        else:
            parts = [f"APIGroups:{_go_strings([group])}", f"Resources:{_go_strings([resource])}"]
            if name:
                parts.append(f"ResourceNames:{_go_strings([name])}")
        parts.append(f"Verbs:{_go_strings(verbs)}")
        lines.append("{" + ", ".join(parts) + "}")
    return sorted(lines)


# -- the index -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """What one binding gives one of its subjects: the referenced role's rules, or the
    error that kept them from being found (a binding to a role that does not exist)."""

    binding: tuple[str, str, str]  # (kind, namespace, name): one binding counts once per caller
    source: str  # Kubernetes' description: `ClusterRoleBinding "x" of ClusterRole "y" to User "z"`
    rules: tuple[Rule, ...]
    allowed: Verdict  # the verdict when one of its rules matches, made once
    error: str = ""

    @classmethod
    def of(cls, binding: tuple[str, str, str], source: str, rules: tuple[Rule, ...], error: str = "") -> Grant:
        return cls(binding, source, rules, Verdict(Decision.ALLOW, f"RBAC: allowed by {source}"), error)


def _describe_subject(subject: Any, binding_namespace: str) -> str:
    if subject.kind == SERVICE_ACCOUNT_KIND:
        return f'{subject.kind} "{subject.name}/{subject.namespace or binding_namespace}"'
    return f'{subject.kind} "{subject.name}"'


RoleLookup = Callable[[str, str], Any]  # (namespace, name) -> the stored role, or None


@dataclass
class RBACIndex:
    """Every binding's grants, by the subject it names."""

    cluster_users: dict[str, list[Grant]]
    cluster_groups: dict[str, list[Grant]]
    namespace_users: dict[tuple[str, str], list[Grant]]
    namespace_groups: dict[tuple[str, str], list[Grant]]

    @classmethod
    def build(
        cls,
        role_bindings: Iterable[Any],
        cluster_role_bindings: Iterable[Any],
        get_role: RoleLookup,
        get_cluster_role: RoleLookup,
    ) -> RBACIndex:
        index = cls({}, {}, {}, {})
        compiled: dict[tuple[str, str, str], tuple[tuple[Rule, ...], str]] = {}

        def role_rules(ref: Any, namespace: str) -> tuple[tuple[Rule, ...], str]:
            """GetRoleReferenceRules: the rules of a binding's roleRef, or an error."""
            key = (ref.kind, namespace if ref.kind == ROLES.name else "", ref.name)
            if key not in compiled:
                if ref.kind == ROLES.name:
                    role = get_role(namespace, ref.name) if namespace else None
                elif ref.kind == CLUSTER_ROLES.name:
                    role = get_cluster_role("", ref.name)
                else:
                    compiled[key] = (), f'unsupported role reference kind: "{ref.kind}"'
                    return compiled[key]
                if role is None:
                    compiled[key] = (), f'{ref.kind.lower()}.{RBAC_API_GROUP} "{ref.name}" not found'
                else:
                    compiled[key] = tuple(Rule.of(rule) for rule in role.rules), ""
            return compiled[key]

        for binding in cluster_role_bindings:
            rules, error = role_rules(binding.role_ref, "")
            key = (CLUSTER_ROLE_BINDINGS.name, "", binding.metadata.name)
            for subject in binding.subjects:
                source = (
                    f'ClusterRoleBinding "{binding.metadata.name}" of {binding.role_ref.kind} '
                    f'"{binding.role_ref.name}" to {_describe_subject(subject, "")}'
                )
                grant = Grant.of(key, source, rules, error)
                if subject.kind == USER_KIND:
                    index.cluster_users.setdefault(subject.name, []).append(grant)
                elif subject.kind == GROUP_KIND:
                    index.cluster_groups.setdefault(subject.name, []).append(grant)
                elif subject.kind == SERVICE_ACCOUNT_KIND and subject.namespace:
                    user = service_account_username(subject.namespace, subject.name)
                    index.cluster_users.setdefault(user, []).append(grant)
        for binding in role_bindings:
            namespace = binding.metadata.namespace
            rules, error = role_rules(binding.role_ref, namespace)
            key = (ROLE_BINDINGS.name, namespace, binding.metadata.name)
            for subject in binding.subjects:
                source = (
                    f'RoleBinding "{binding.metadata.name}/{namespace}" of {binding.role_ref.kind} '
                    f'"{binding.role_ref.name}" to {_describe_subject(subject, namespace)}'
                )
                grant = Grant.of(key, source, rules, error)
                if subject.kind == USER_KIND:
                    index.namespace_users.setdefault((namespace, subject.name), []).append(grant)
                elif subject.kind == GROUP_KIND:
                    index.namespace_groups.setdefault((namespace, subject.name), []).append(grant)
                elif subject.kind == SERVICE_ACCOUNT_KIND:
                    # A RoleBinding's service account defaults to the binding's namespace.
                    user = service_account_username(subject.namespace or namespace, subject.name)
                    index.namespace_users.setdefault((namespace, user), []).append(grant)
        return index

    def grants_for(self, user: UserInfo, namespace: str) -> list[Grant]:
        """The grants that apply to user in namespace ("": cluster bindings only), each
        binding once, cluster bindings first (Kubernetes' visiting order)."""
        found: list[Grant] = []
        seen: set[tuple[str, str, str]] = set()

        def add(grants: list[Grant] | None) -> None:
            for grant in grants or ():
                if grant.binding not in seen:
                    seen.add(grant.binding)
                    found.append(grant)

        add(self.cluster_users.get(user.name))
        for group in user.groups:
            add(self.cluster_groups.get(group))
        if namespace:
            add(self.namespace_users.get((namespace, user.name)))
            for group in user.groups:
                add(self.namespace_groups.get((namespace, group)))
        return found


_MASTERS = Verdict(Decision.ALLOW, f"RBAC: allowed by membership of the {SYSTEM_MASTERS} group")


class RBACAuthorizer:
    """Kubernetes' RBAC authorizer over the API server's watch caches."""

    def __init__(self, registries: Mapping[str, Registry]) -> None:
        self._caches = {kind.name: registries[kind.name].cache for kind in RBAC_KINDS}
        self._index: RBACIndex | None = None
        self._grants: dict[tuple[str, tuple[str, ...], str], list[Grant]] = {}
        for cache in self._caches.values():
            cache.on_change(self.invalidate)

    def invalidate(self) -> None:
        """An RBAC object changed: the next call rebuilds the index (one rebuild for a burst)."""
        self._index = None
        self._grants = {}

    @property
    def index(self) -> RBACIndex:
        index = self._index
        if index is None:
            roles, cluster_roles = self._caches[ROLES.name], self._caches[CLUSTER_ROLES.name]
            index = self._index = RBACIndex.build(
                self._caches[ROLE_BINDINGS.name].objects(),
                self._caches[CLUSTER_ROLE_BINDINGS.name].objects(),
                roles.get,
                cluster_roles.get,
            )
        return index

    def grants_for(self, user: UserInfo, namespace: str) -> list[Grant]:
        key = (user.name, user.groups, namespace)
        grants = self._grants.get(key)
        if grants is None:
            grants = self.index.grants_for(user, namespace)
            if len(self._grants) >= _GRANTS_MEMO_SIZE:
                self._grants = {}
            self._grants[key] = grants
        return grants

    def rules_for(self, user: UserInfo, namespace: str) -> list[Rule]:
        """Every rule that applies to user in namespace (Kubernetes' RulesFor)."""
        return [rule for grant in self.grants_for(user, namespace) for rule in grant.rules]

    def authorize(self, attributes: RequestAttributes) -> Verdict:
        user = attributes.user
        if SYSTEM_MASTERS in user.groups:
            return _MASTERS
        grants = self.grants_for(user, attributes.namespace)
        for grant in grants:
            for rule in grant.rules:
                if rule_allows(attributes, rule):
                    return grant.allowed
        return Verdict(Decision.NO_OPINION, _denial_reason(grants))


def _denial_reason(grants: list[Grant]) -> str:
    """Why RBAC has no opinion. The caller's message already names the user, verb, resource
    and namespace (RequestAttributes.describe), so this says only what RBAC found."""
    reason = "RBAC: no role bound to the user or its groups allows it"
    errors = sorted({f"{grant.error} (from {grant.source})" for grant in grants if grant.error})
    if errors:
        reason += "; " + "; ".join(errors)
    return reason


# -- admission: escalation prevention ----------------------------------------------------


def _only_gc_fields_change(obj: Any, old: Any) -> bool:
    """Kubernetes' IsOnlyMutatingGCFields: an update that only changes owner references
    (what garbage collection writes) is never an escalation."""
    if old is None:
        return False
    new_copy, old_copy = type(obj)(), type(old)()
    new_copy.CopyFrom(obj)
    old_copy.CopyFrom(old)
    new_copy.metadata.ClearField("owner_references")
    old_copy.metadata.ClearField("owner_references")
    return bool(new_copy == old_copy)


def _groups(user: UserInfo) -> str:
    return _go_strings(user.groups)


def _find_rbac(authorizer: Any) -> RBACAuthorizer | None:
    if isinstance(authorizer, RBACAuthorizer):
        return authorizer
    for inner in getattr(authorizer, "authorizers", ()):
        found = _find_rbac(inner)
        if found is not None:
            return found
    return None


class EscalationCheck:
    """Refuses a Role, ClusterRole, RoleBinding or ClusterRoleBinding write that would give
    away permissions the caller does not hold (Kubernetes' policybased storages)."""

    name = "RBACEscalationCheck"

    def __init__(self, registries: Mapping[str, Registry], authorizer: Authorizer, rbac: RBACAuthorizer) -> None:
        self.authorizer = authorizer
        self.rbac = rbac
        self.roles = registries[ROLES.name].cache
        self.cluster_roles = registries[CLUSTER_ROLES.name].cache

    def admit(self, request: AdmissionRequest) -> None:
        # Every write of every kind passes here: the cheap tests first.
        if request.operation not in (CREATE, UPDATE) or request.kind.name not in _RBAC_KIND_NAMES:
            return
        user = request.user
        # The API server itself and admins: Kubernetes' EscalationAllowed.
        if SYSTEM_MASTERS in user.groups:
            return
        if request.operation == UPDATE and _only_gc_fields_change(request.obj, request.old):
            return
        if request.kind in (ROLES, CLUSTER_ROLES):
            self._check_role(request)
        else:
            self._check_binding(request)

    def _check_role(self, request: AdmissionRequest) -> None:
        kind, obj = request.kind, request.obj
        namespace = obj.metadata.namespace if kind is ROLES else ""
        escalate = RequestAttributes(
            request.user,
            ESCALATE_VERB,
            kind.plural,
            namespace=namespace,
            name=obj.metadata.name,
            api_group=RBAC_API_GROUP,
        )
        if self.authorizer.authorize(escalate).allowed:
            return
        missing = self.missing(request.user, namespace, obj.rules)
        if missing:
            raise self._forbidden(
                request, missing, f'or be allowed "{ESCALATE_VERB}" on {kind.plural}.{RBAC_API_GROUP}'
            )

    def _check_binding(self, request: AdmissionRequest) -> None:
        kind, obj = request.kind, request.obj
        namespace = obj.metadata.namespace if kind is ROLE_BINDINGS else ""
        ref = obj.role_ref
        role_kind = ROLES if ref.kind == ROLES.name else CLUSTER_ROLES
        bind = RequestAttributes(
            request.user, BIND_VERB, role_kind.plural, namespace=namespace, name=ref.name, api_group=ref.api_group
        )
        if self.authorizer.authorize(bind).allowed:
            return
        if role_kind is ROLES:
            role = self.roles.get(namespace, ref.name)
        else:
            role = self.cluster_roles.get("", ref.name)
        if role is None:
            # As Kubernetes: the rules of a role that does not exist cannot be shown held.
            where = f' in namespace "{namespace}"' if role_kind is ROLES else ""
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                f'roleRef.name: {role_kind.singular}.{RBAC_API_GROUP} "{ref.name}" not found{where}',
            )
        missing = self.missing(request.user, namespace, role.rules)
        if missing:
            raise self._forbidden(
                request, missing, f'or be allowed "{BIND_VERB}" on {role_kind.plural}.{RBAC_API_GROUP} "{ref.name}"'
            )

    def missing(self, user: UserInfo, namespace: str, rules: Iterable[Any]) -> list[AtomicRule]:
        """The atoms of rules the caller is not allowed in namespace. Resource atoms are
        asked of the server's authorizer; non-resource URLs, which no request attribute
        names, are compared with the caller's RBAC rules as Kubernetes' Covers does."""
        missing: list[AtomicRule] = []
        owner_rules: list[Rule] | None = None
        for rule in rules:
            for atom in breakdown(rule):
                if atom.non_resource_url:
                    if owner_rules is None:
                        owner_rules = self.rbac.rules_for(user, namespace)
                    if not any(rule_covers(owner, atom) for owner in owner_rules):
                        missing.append(atom)
                    continue
                resource, _, subresource = atom.resource.partition("/")
                attributes = RequestAttributes(
                    user, atom.verb, resource, subresource, namespace, atom.resource_name, atom.api_group
                )
                if not self.authorizer.authorize(attributes).allowed:
                    missing.append(atom)
        return missing

    def _forbidden(self, request: AdmissionRequest, missing: list[AtomicRule], remedy: str) -> ApiError:
        user = request.user
        held = "; ".join(describe_atoms(missing))
        where = f' in namespace "{request.obj.metadata.namespace}"' if request.kind.namespaced else ""
        log.info(
            "rbac_escalation_refused", user=user.name, kind=request.kind.name, name=request.name, missing=len(missing)
        )
        return ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            f'{request.kind.plural}.{RBAC_API_GROUP} "{request.name}" is forbidden{where}: user "{user.name}" '
            f"(groups={_groups(user)}) is attempting to grant RBAC permissions not currently held: {held} "
            f"(hold them {remedy})",
        )


def admission_plugins(registries: Mapping[str, Registry], authorizer: Authorizer) -> list[AdmissionPlugin]:
    """RBAC's escalation check. It asks `authorizer` (the server's whole chain) whether the
    caller holds each permission it grants, as Kubernetes does for "escalate" and "bind"."""
    rbac = _find_rbac(authorizer) or RBACAuthorizer(registries)
    return [EscalationCheck(registries, authorizer, rbac)]
