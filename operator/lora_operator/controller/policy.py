"""The platform policy's verdict on a LoRAJob spec: what a job author may choose (trainer image,
S3 endpoint, PriorityClass, node selector, tolerations, credentials Secret), as set in the
operator config's `policy`.

A list of refusals, each naming the spec field and the policy field, so that the job's
Validated condition and Warning Event tell both the author and the platform team what to change.
The spec checks are pure and total (malformed input is a refusal, never an exception); only the
credentials Secret's opt-in label needs one API read.

Deny rules (`system-*`, the control-plane node roles) compare names after `comparable_name`, so
no spelling (case, spaces, Unicode look-alikes) slips past them; allow lists match exactly as
written, since Kubernetes compares these names byte for byte."""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from dataclasses import dataclass

from lora_contract.storage import StorageError, parse_endpoint
from lora_contract.types import LoRAJobSpec, Toleration

from ..api.operator_config import OperatorConfig, PlatformPolicy
from .kube import Kube
from .secret_reads import SecretReader, SecretReads

# Prefix entries of policy.allowedTrainerImages end with one of these: a registry or repository
# path ('/'), any tag of one repository (':'), any digest of one repository ('@').
IMAGE_PREFIX_ENDINGS = ("/", ":", "@")

# Host names of cloud metadata services (AWS, GCP, Azure, OCI use the link-local addresses).
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data"}
)
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
# Names every pod's /etc/hosts (or resolver) maps to the node or the pod itself.
LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# NAT64's well-known prefix (RFC 6052): the last 32 bits are an IPv4 address.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
THIS_HOST_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # Linux connects 0.x.y.z to the host


# ---------------------------------------------------------------------- names


def _is_dash(char: str) -> bool:
    return unicodedata.category(char) == "Pd" or char in "\u2212\u02d7\u2043\ufe63\uff0d"


def comparable_name(name: str) -> str:
    """The spelling a deny rule compares: NFKC (fullwidth and compatibility forms), every Unicode
    dash or minus as '-', invisible format characters and all whitespace dropped, case folded.
    'System\u2011Node-Critical ' and 'system-node-critical' compare equal."""
    text = unicodedata.normalize("NFKC", name)
    kept = (
        "-" if _is_dash(char) else char
        for char in text
        if not char.isspace() and unicodedata.category(char) != "Cf"
    )
    return "".join(kept).casefold()


# ---------------------------------------------------------------------- trainer image


def image_allowed(image: str, allowed: list[str]) -> bool:
    """Exact match, or a prefix entry (ending in '/', ':' or '@') that the image starts with."""
    return any(
        image == entry or (entry.endswith(IMAGE_PREFIX_ENDINGS) and image.startswith(entry))
        for entry in allowed
    )


def trainer_image_refusal(spec: LoRAJobSpec, config: OperatorConfig) -> str | None:
    image = spec.trainer_image
    if image is None:
        return None  # the operator's own image
    allowed = _unique([config.trainer_image, *config.policy.allowed_trainer_images])
    if image_allowed(image, allowed):
        return None
    return (
        f"spec.trainerImage: {image!r} is not allowed by the platform policy "
        f"(policy.allowedTrainerImages: {', '.join(allowed)})"
    )


# ---------------------------------------------------------------------- S3 endpoint

EndpointKey = tuple[bool, str]  # (https, netloc without the scheme's default port, lower case)

PORT = re.compile(r"[0-9]{1,5}")
DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63


@dataclass(frozen=True)
class ParsedEndpoint:
    secure: bool
    userinfo: str  # 'user@' or ''
    host: str  # lower case, no trailing dot; an IPv6 literal without brackets
    port: int | None  # None: the scheme's default

    def key(self) -> EndpointKey:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return self.secure, f"{self.userinfo}{host}{port}"


def _not_a_url(endpoint: str, why: str) -> str:
    return f"S3 endpoint {endpoint!r} is not a URL like http://minio:9000 ({why})"


def _label_problem(label: str) -> str | None:
    if not label:
        return "an empty label"
    if len(label) > MAX_LABEL_LENGTH:
        return f"a label longer than {MAX_LABEL_LENGTH} characters"
    if not DNS_LABEL.fullmatch(label):
        return f"the label {label!r} is not a DNS label"
    if label.startswith("xn--"):
        try:
            decoded = label[4:].encode("ascii").decode("punycode")
            valid = bool(decoded) and decoded.encode("idna").decode("ascii") == label
        except (UnicodeError, ValueError):
            valid = False
        if not valid:
            return f"the label {label!r} is not valid IDNA"
    return None


def _host_problem(host: str) -> str | None:
    """Why `host` (lower case, no brackets, no trailing dot) is not a host name or address."""
    if not host:
        return "no host"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return None
    if len(host) > MAX_HOST_LENGTH:
        return f"a host name longer than {MAX_HOST_LENGTH} characters"
    for label in host.split("."):
        problem = _label_problem(label)
        if problem is not None:
            return problem
    return None


def parse_policy_endpoint(endpoint: str) -> ParsedEndpoint | str:
    """The endpoint's parts, or why it is not an endpoint URL (a sentence without the field name).
    Never raises: invalid IDNA, an empty host, a port out of range or not a number, an unclosed
    '[' and over-long names are answers, not exceptions."""
    try:
        netloc, secure = parse_endpoint(endpoint)
    except StorageError as exc:
        return str(exc)
    except ValueError:  # urllib's own: '[' without ']', or brackets around no IPv6 address
        return _not_a_url(endpoint, "brackets that do not enclose an IPv6 address")
    userinfo, at, hostport = netloc.rpartition("@")
    userinfo = f"{userinfo}{at}".lower()
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket:
            return _not_a_url(endpoint, "unclosed '['")
        if rest and not rest.startswith(":"):
            return _not_a_url(endpoint, f"{rest!r} after the IPv6 address")
        port_text = rest[1:] if rest else None
        if ":" not in host:
            return _not_a_url(endpoint, f"{host!r} in brackets is not an IPv6 address")
    else:
        host, colon, port_text_found = hostport.partition(":")
        port_text = port_text_found if colon else None
    host = host.lower()
    if host.endswith(".") and ":" not in host:
        host = host[:-1]
    problem = _host_problem(host)
    if problem is not None:
        return _not_a_url(endpoint, problem)
    port: int | None = None
    if port_text is not None:
        if not PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            return _not_a_url(endpoint, f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    if port == (443 if secure else 80):
        port = None
    if ":" in host:
        host = str(ipaddress.IPv6Address(host))
    return ParsedEndpoint(secure, userinfo, host, port)


def endpoint_key(endpoint: str) -> EndpointKey | str:
    """'https://S3.example.com:443' and 's3.example.com' compare equal (a bare host means https,
    as in lora_contract.storage). For what is not an endpoint URL: why not. Never raises."""
    parsed = parse_policy_endpoint(endpoint)
    return parsed if isinstance(parsed, str) else parsed.key()


def _ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """Also the forms resolvers accept besides dotted quads ('2852039166', '0xa9.0xfe.43518')."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `name` is written as (IPv4 in any resolver form, IPv6 with or without
    brackets), with an IPv4 address embedded in IPv6 (mapped, compatible, 6to4, NAT64) unwrapped."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            name.removeprefix("[").removesuffix("]")
        )
    except ValueError:
        literal = _ipv4_literal(name)
        if literal is None:
            return None
        return literal
    if not isinstance(address, ipaddress.IPv6Address) or address in METADATA_ADDRESSES:
        return address
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is not None:
        return embedded
    if address in NAT64_PREFIX or (address.packed[:12] == bytes(12) and int(address) > 1):
        return ipaddress.IPv4Address(address.packed[12:])  # NAT64, or IPv4-compatible ::a.b.c.d
    return address


def forbidden_address(host: str) -> str | None:
    """Why this host is never a default-allowed S3 endpoint (metadata services, the node itself),
    or None. A DNS name that merely resolves there is not caught: the allow list is the control,
    this is the backstop for literal addresses and well-known names. Never raises."""
    name = unicodedata.normalize("NFKC", host).replace("\u3002", ".").strip().lower().rstrip(".")
    if name in METADATA_HOSTS:
        return "a cloud metadata service"
    if name in LOOPBACK_HOSTS or name.endswith(".localhost"):
        return "a loopback address"
    address = _address(name)
    if address is None:
        return None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local (cloud metadata) address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified or address in THIS_HOST_NETWORK:
        return "an unspecified address"
    return None


def s3_endpoint_refusal(spec: LoRAJobSpec, config: OperatorConfig) -> str | None:
    endpoint = spec.output.endpoint
    if endpoint is None:
        return None  # the platform's own s3.endpoint
    parsed = parse_policy_endpoint(endpoint)
    if isinstance(parsed, str):
        return f"spec.output.endpoint: {parsed}"
    allowed = _unique(
        [*config.policy.allowed_s3_endpoints, *([config.s3.endpoint] if config.s3.endpoint else [])]
    )
    # An entry that does not parse is the config's own mistake; it never matches.
    allowed_keys = {key for key in map(endpoint_key, allowed) if not isinstance(key, str)}
    if parsed.key() in allowed_keys:
        return None  # an explicit entry wins, even for an address refused below
    why = forbidden_address(parsed.host)
    if why is not None:
        return (
            f"spec.output.endpoint: {endpoint!r} is {why}, refused by the platform policy "
            "unless listed in policy.allowedS3Endpoints"
        )
    listed = (
        ", ".join(allowed) if allowed else "none: it is empty and the config has no s3.endpoint"
    )
    return (
        f"spec.output.endpoint: {endpoint!r} is not allowed by the platform policy "
        f"(policy.allowedS3Endpoints: {listed})"
    )


# ---------------------------------------------------------------------- priority class

SYSTEM_PRIORITY_PREFIX = "system-"


def priority_class_refusal(spec: LoRAJobSpec, policy: PlatformPolicy) -> str | None:
    name = spec.resources.priority_class_name
    if name is None:
        return None
    allowed = policy.allowed_priority_classes
    if allowed is None:
        if not comparable_name(name).startswith(SYSTEM_PRIORITY_PREFIX):
            return None
        rule = "policy.allowedPriorityClasses is unset: any class but system-*"
    elif name in allowed:
        return None
    else:
        rule = f"policy.allowedPriorityClasses: {', '.join(allowed) or 'none'}"
    return (
        f"spec.resources.priorityClassName: {name!r} is not allowed by the platform policy ({rule})"
    )


# ---------------------------------------------------------------------- node placement

# The labels and taints of control-plane nodes (kubeadm; 'master' before Kubernetes 1.24).
CONTROL_PLANE_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
_CONTROL_PLANE = frozenset(CONTROL_PLANE_KEYS)


def targets_control_plane(key: str) -> bool:
    return comparable_name(key) in _CONTROL_PLANE


def node_selector_refusals(spec: LoRAJobSpec, policy: PlatformPolicy) -> list[str]:
    """One refusal per nodeSelector key the policy does not allow."""
    allowed = policy.allowed_node_selector_keys
    if allowed is None:
        refused = [key for key in spec.resources.node_selector if targets_control_plane(key)]
        rule = (
            "policy.allowedNodeSelectorKeys is unset: any key but the control-plane node roles "
            f"{', '.join(CONTROL_PLANE_KEYS)}"
        )
    else:
        refused = [key for key in spec.resources.node_selector if key not in allowed]
        rule = f"policy.allowedNodeSelectorKeys: {', '.join(allowed) or 'none'}"
    return [
        f"spec.resources.nodeSelector: key {key!r} is not allowed by the platform policy ({rule})"
        for key in refused
    ]


def toleration_allowed(toleration: Toleration, policy: PlatformPolicy) -> bool:
    """Unset policy: any toleration with a key that is not a control-plane taint (one without a
    key matches every taint). A list: the key equals a rule's key, and the effect is set and
    listed where the rule lists effects (an unset effect tolerates them all)."""
    key = toleration.key or ""
    if policy.allowed_tolerations is None:
        return bool(comparable_name(key)) and not targets_control_plane(key)
    return any(
        key == rule.key and (not rule.effects or toleration.effect in rule.effects)
        for rule in policy.allowed_tolerations
    )


def toleration_refusals(spec: LoRAJobSpec, policy: PlatformPolicy) -> list[str]:
    """One refusal per toleration the policy does not allow, naming its index."""
    if policy.allowed_tolerations is None:
        rule = (
            "policy.allowedTolerations is unset: any toleration with a key but the control-plane "
            f"taints {', '.join(CONTROL_PLANE_KEYS)}"
        )
    else:
        rules = [
            f"{r.key} ({'/'.join(r.effects) or 'any effect'})" for r in policy.allowed_tolerations
        ]
        rule = f"policy.allowedTolerations: {', '.join(rules) or 'none'}"
    refusals = []
    for index, toleration in enumerate(spec.resources.tolerations):
        if toleration_allowed(toleration, policy):
            continue
        what = toleration.to_wire()
        matches = " (no key: it matches every taint)" if not toleration.key else ""
        refusals.append(
            f"spec.resources.tolerations[{index}]: {what}{matches} is not allowed by the "
            f"platform policy ({rule})"
        )
    return refusals


# ---------------------------------------------------------------------- credentials Secret


def secret_needing_opt_in(spec: LoRAJobSpec, config: OperatorConfig) -> str | None:
    """The Secret the spec names whose opt-in label must be checked, or None: none named, the
    check is off, or it is the operator config's own s3.credentialsSecret (the platform's
    choice, read in the job's namespace like any other)."""
    ref = spec.output.credentials_secret
    if ref is None or not config.policy.require_secret_opt_in:
        return None
    default = config.s3.credentials_secret
    if default is not None and default.name == ref.name:
        return None
    return ref.name


async def secret_refusal(
    kube: Kube,
    namespace: str,
    spec: LoRAJobSpec,
    config: OperatorConfig,
    read_secret: SecretReader | None = None,
) -> str | None:
    """`read_secret`: the reconcile's shared read (one Secret GET per resync); else a GET."""
    name = secret_needing_opt_in(spec, config)
    if name is None:
        return None
    label = config.policy.secret_opt_in_label
    rule = f"policy.requireSecretOptIn: the Secret must carry the label {label}=true"
    secret = await (read_secret or SecretReads(kube, namespace))(name)
    if secret is None:
        return f"spec.output.credentialsSecret: Secret {name!r} not found in {namespace} ({rule})"
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(label) == "true":
        return None
    return (
        f"spec.output.credentialsSecret: Secret {name!r} is not usable as job credentials by "
        f"the platform policy ({rule})"
    )


# ---------------------------------------------------------------------- all of it


def spec_refusals(spec: LoRAJobSpec, config: OperatorConfig) -> list[str]:
    """The checks that need nothing but the spec and the config."""
    found = (
        trainer_image_refusal(spec, config),
        s3_endpoint_refusal(spec, config),
        priority_class_refusal(spec, config.policy),
    )
    return [
        *(refusal for refusal in found if refusal),
        *node_selector_refusals(spec, config.policy),
        *toleration_refusals(spec, config.policy),
    ]


async def policy_refusals(
    kube: Kube,
    namespace: str,
    spec: LoRAJobSpec,
    config: OperatorConfig,
    read_secret: SecretReader | None = None,
) -> list[str]:
    refusals = spec_refusals(spec, config)
    secret = await secret_refusal(kube, namespace, spec, config, read_secret)
    return [*refusals, secret] if secret else refusals


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
