"""The platform policy's verdict on a LoRAJob spec: what a job author may choose (trainer image,
S3 endpoint, PriorityClass, credentials Secret), as set in the operator config's `policy`.

A list of refusals, each naming the spec field and the policy field, so that the job's
Validated condition and Warning Event tell both the author and the platform team what to change.
The spec checks are pure; only the credentials Secret's opt-in label needs one API read."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from lora_contract.storage import StorageError, parse_endpoint
from lora_contract.types import LoRAJobSpec

from ..api.operator_config import OperatorConfig, PlatformPolicy
from .kube import Kube

POLICY_VIOLATION = "PolicyViolation"  # reason of the Validated condition and of the Event

# Prefix entries of policy.allowedTrainerImages end with one of these: a registry or repository
# path ('/'), any tag of one repository (':'), any digest of one repository ('@').
IMAGE_PREFIX_ENDINGS = ("/", ":", "@")

# Host names of cloud metadata services (AWS, GCP, Azure, OCI use the link-local addresses).
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
AWS_METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")


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


def endpoint_key(endpoint: str) -> EndpointKey:
    """'https://S3.example.com:443' and 's3.example.com' compare equal (a bare host means https,
    as in lora_contract.storage). Raises StorageError for what is not an endpoint URL."""
    try:
        netloc, secure = parse_endpoint(endpoint)
    except ValueError:  # urllib's own, e.g. an unclosed IPv6 bracket
        message = f"S3 endpoint {endpoint!r} is not a URL like http://minio:9000"
        raise StorageError(message, transient=False) from None
    netloc = netloc.lower()
    default_port = ":443" if secure else ":80"
    if netloc.endswith(default_port):
        netloc = netloc[: -len(default_port)]
    return secure, netloc


def _ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """Also the forms resolvers accept besides dotted quads ('2852039166', '0xa9.0xfe.43518')."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def forbidden_address(host: str) -> str | None:
    """Why this host is never a default-allowed S3 endpoint (metadata services, the node itself),
    or None. A DNS name that merely resolves there is not caught: the allow list is the control,
    this is the backstop for literal addresses and well-known names."""
    name = host.lower().rstrip(".")
    if name in METADATA_HOSTS:
        return "a cloud metadata service"
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback address"
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(name)
    except ValueError:
        literal = _ipv4_literal(name)
        if literal is None:
            return None
        address = literal
    if isinstance(address, ipaddress.IPv6Address):
        if address == AWS_METADATA_V6:
            return "a cloud metadata address"
        address = address.ipv4_mapped or address
    if address.is_link_local:
        return "a link-local (cloud metadata) address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    return None


def s3_endpoint_refusal(spec: LoRAJobSpec, config: OperatorConfig) -> str | None:
    endpoint = spec.output.endpoint
    if endpoint is None:
        return None  # the platform's own s3.endpoint
    try:
        key = endpoint_key(endpoint)
    except StorageError as exc:
        return f"spec.output.endpoint: {exc}"
    allowed = _unique(
        [*config.policy.allowed_s3_endpoints, *([config.s3.endpoint] if config.s3.endpoint else [])]
    )
    allowed_keys = set()
    for entry in allowed:
        try:
            allowed_keys.add(endpoint_key(entry))
        except StorageError:
            continue  # the config's own mistake; it never matches
    if key in allowed_keys:
        return None  # an explicit entry wins, even for an address refused below
    host = urlsplit(("https://" if key[0] else "http://") + key[1]).hostname or ""
    why = forbidden_address(host)
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
        if not name.startswith(SYSTEM_PRIORITY_PREFIX):
            return None
        rule = "policy.allowedPriorityClasses is unset: any class but system-*"
    elif name in allowed:
        return None
    else:
        rule = f"policy.allowedPriorityClasses: {', '.join(allowed) or 'none'}"
    return (
        f"spec.resources.priorityClassName: {name!r} is not allowed by the platform policy ({rule})"
    )


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
    kube: Kube, namespace: str, spec: LoRAJobSpec, config: OperatorConfig
) -> str | None:
    name = secret_needing_opt_in(spec, config)
    if name is None:
        return None
    label = config.policy.secret_opt_in_label
    rule = f"policy.requireSecretOptIn: the Secret must carry the label {label}=true"
    secret = await kube.get("v1/secrets", namespace, name)
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
    return [refusal for refusal in found if refusal]


async def policy_refusals(
    kube: Kube, namespace: str, spec: LoRAJobSpec, config: OperatorConfig
) -> list[str]:
    refusals = spec_refusals(spec, config)
    secret = await secret_refusal(kube, namespace, spec, config)
    return [*refusals, secret] if secret else refusals


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
