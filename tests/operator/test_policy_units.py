"""policy.py, unit by unit (the `policy` mutation target). Every expected value is written out
by hand from the rule it checks: the exact refusal sentence (spec field, value, policy field),
the normalised endpoint key, the reason an address is refused. Names the API types would refuse
(a capitalised PriorityClass, say) are put into a parsed spec with `model_copy`, which skips
validation: the policy is the second line and must hold on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import base_job
from pydantic import ValidationError

from lora_contract.types import LoRAJobSpec, Toleration
from lora_operator.api.loading import parse_lorajob
from lora_operator.api.operator_config import OperatorConfig, PlatformPolicy
from lora_operator.controller.policy import (
    comparable_name,
    endpoint_key,
    forbidden_address,
    image_allowed,
    node_selector_refusals,
    policy_refusals,
    priority_class_refusal,
    s3_endpoint_refusal,
    secret_needing_opt_in,
    spec_refusals,
    targets_control_plane,
    toleration_allowed,
    toleration_refusals,
    trainer_image_refusal,
)

IMAGE = "ghcr.io/lora-operator/trainer:0.1.0"
PLATFORM_S3 = "http://minio.lora-system.svc:9000"
SECRETS = "/api/v1/namespaces/team/secrets"
LABEL = "finetune.lora-operator.io/credentials"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
MASTER = "node-role.kubernetes.io/master"
UNSET_SELECTOR_RULE = (
    "policy.allowedNodeSelectorKeys is unset: any key but the control-plane node roles "
    "node-role.kubernetes.io/control-plane, node-role.kubernetes.io/master"
)
UNSET_TOLERATION_RULE = (
    "policy.allowedTolerations is unset: any toleration with a key but the control-plane taints "
    "node-role.kubernetes.io/control-plane, node-role.kubernetes.io/master"
)


def spec(**overrides: Any) -> LoRAJobSpec:
    return parse_lorajob(base_job("p", **overrides), "team").spec


def with_resources(**fields: Any) -> LoRAJobSpec:
    """A parsed spec whose resources carry `fields` unvalidated."""
    parsed = spec()
    return parsed.model_copy(update={"resources": parsed.resources.model_copy(update=fields)})


def with_endpoint(endpoint: str) -> LoRAJobSpec:
    parsed = spec()
    return parsed.model_copy(
        update={"output": parsed.output.model_copy(update={"endpoint": endpoint})}
    )


def config(s3: dict[str, Any] | None = None, **policy: Any) -> OperatorConfig:
    return OperatorConfig.model_validate(
        {
            "trainerImage": IMAGE,
            "s3": {"endpoint": PLATFORM_S3, "credentialsSecret": {"name": "platform-s3"}}
            if s3 is None
            else s3,
            "policy": policy,
        }
    )


def policy(**fields: Any) -> PlatformPolicy:
    return PlatformPolicy.model_validate(fields)


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "spelling",
    [
        "system-node-critical",
        "System-Node-Critical",
        "SYSTEM-NODE-CRITICAL",
        " system-node-critical",
        "system-node-critical\t",
        "system -node-critical",
        "system\u2010node-critical",  # hyphen
        "system\u2011node-critical",  # non-breaking hyphen
        "system\u2212node-critical",  # minus sign
        "system\ufe63node-critical",  # small hyphen-minus
        "system\uff0dnode-critical",  # fullwidth hyphen-minus
        "system\u2013node-critical",  # en dash
        "system\u02d7node-critical",  # modifier letter minus
        "\uff53\uff59\uff53\uff54\uff45\uff4d-node-critical",  # fullwidth letters
        "sys\u200btem-node-critical",  # zero-width space
        "\u00adsystem-node-critical",  # soft hyphen (a format character)
    ],
)
def test_every_spelling_compares_as_the_canonical_name(spelling: str) -> None:
    assert comparable_name(spelling) == "system-node-critical"


def test_comparable_name_keeps_what_differs() -> None:
    assert comparable_name("systemnode") == "systemnode"
    assert comparable_name("system_node") == "system_node"
    assert comparable_name("system.node") == "system.node"
    assert comparable_name("systemXnode") == "systemxnode"  # a letter is no dash
    assert comparable_name("") == ""


# ---------------------------------------------------------------------- priority class


@pytest.mark.parametrize(
    "name",
    [
        "system-node-critical",
        "System-Node-Critical",
        " system-node-critical",
        "system\u2010node-critical",
        "system\u2011node-critical",
        "system\u2212node-critical",
        "system\ufe63node-critical",
        "\uff53ystem-cluster-critical",
        "system-",
    ],
)
def test_system_classes_are_refused_in_any_spelling(name: str) -> None:
    refusal = priority_class_refusal(with_resources(priority_class_name=name), policy())
    assert refusal == (
        f"spec.resources.priorityClassName: {name!r} is not allowed by the platform policy "
        "(policy.allowedPriorityClasses is unset: any class but system-*)"
    )


@pytest.mark.parametrize("name", ["batch-low", "systemic", "system", "my-system-class"])
def test_other_classes_pass_by_default(name: str) -> None:
    assert priority_class_refusal(with_resources(priority_class_name=name), policy()) is None


def test_no_class_passes_any_policy() -> None:
    assert priority_class_refusal(spec(), policy(allowedPriorityClasses=[])) is None


def test_an_allow_list_matches_exactly_as_written() -> None:
    listed = policy(allowedPriorityClasses=["batch-low", "system-cluster-critical"])
    for name in ("batch-low", "system-cluster-critical"):
        assert priority_class_refusal(with_resources(priority_class_name=name), listed) is None
    for name in ("Batch-Low", "batch-low ", "batch\u2010low", "batch-lo", "batch-low2"):
        refusal = priority_class_refusal(with_resources(priority_class_name=name), listed)
        assert refusal == (
            f"spec.resources.priorityClassName: {name!r} is not allowed by the platform policy "
            "(policy.allowedPriorityClasses: batch-low, system-cluster-critical)"
        ), name
    refusal = priority_class_refusal(
        with_resources(priority_class_name="batch-low"), policy(allowedPriorityClasses=[])
    )
    assert refusal == (
        "spec.resources.priorityClassName: 'batch-low' is not allowed by the platform policy "
        "(policy.allowedPriorityClasses: none)"
    )


# ---------------------------------------------------------------------- trainer image


@pytest.mark.parametrize(
    ("entry", "image", "allowed"),
    [
        ("registry.io/team", "registry.io/team-evil/img", False),  # no separator: exact only
        ("registry.io/team", "registry.io/team/img", False),
        ("registry.io/team", "registry.io/team", True),
        ("registry.io/team/", "registry.io/team-evil/img", False),
        ("registry.io/team/", "registry.io/team/img:1", True),
        ("repo:", "repo-x:tag", False),
        ("repo:", "repo:tag", True),
        ("repo:", "repo@sha256:" + "a" * 64, False),
        ("repo@", "repo@sha256:" + "a" * 64, True),
        ("repo@", "repo:tag", False),
        ("host:5000/", "host:5000/img:tag", True),
        ("host:5000/", "host:50000/img:tag", False),
        ("host:5000/img:", "host:5000/img:tag", True),
        ("host:5000/img:", "host:5000/img2:tag", False),
        ("host:5000/img", "host:5000/img:tag", False),
        ("host:5000/img:tag", "host:5000/img:tag", True),
        ("host:5000/img:tag", "host:5000/img:tag2", False),
        ("img@sha256:" + "b" * 64, "img@sha256:" + "b" * 64, True),
        ("img@sha256:" + "b" * 64, "img@sha256:" + "c" * 64, False),
    ],
)
def test_image_entries(entry: str, image: str, allowed: bool) -> None:
    assert image_allowed(image, [entry]) is allowed
    assert image_allowed(image, ["other/", entry]) is allowed  # any entry may allow it
    assert image_allowed(image, []) is False


def test_trainer_image_refusal_names_both_fields_and_lists_each_entry_once() -> None:
    assert trainer_image_refusal(spec(), config()) is None  # the operator's own image
    assert trainer_image_refusal(spec(trainerImage=IMAGE), config()) is None
    cfg = config(allowedTrainerImages=[IMAGE, "registry.corp/ml/"])
    assert trainer_image_refusal(spec(trainerImage="registry.corp/ml/x:1"), cfg) is None
    assert trainer_image_refusal(spec(trainerImage="registry.corp/mlx/x:1"), cfg) == (
        "spec.trainerImage: 'registry.corp/mlx/x:1' is not allowed by the platform policy "
        f"(policy.allowedTrainerImages: {IMAGE}, registry.corp/ml/)"
    )


# ---------------------------------------------------------------------- endpoint keys


@pytest.mark.parametrize(
    ("endpoint", "key"),
    [
        ("https://S3.Example.com:443", (True, "s3.example.com")),
        ("s3.example.com", (True, "s3.example.com")),
        ("s3.example.com:443", (True, "s3.example.com")),
        ("https://s3.example.com:80", (True, "s3.example.com:80")),
        ("http://h:80", (False, "h")),
        ("http://h:443", (False, "h:443")),
        ("http://h:09000", (False, "h:9000")),
        ("http://h:1", (False, "h:1")),
        ("http://h:65535", (False, "h:65535")),
        ("http://host.:9000", (False, "host:9000")),
        ("http://User@Host", (False, "user@host")),
        ("http://[0:0::1]:9000", (False, "[::1]:9000")),
        ("http://[::FFFF:127.0.0.1]", (False, "[::ffff:7f00:1]")),
        ("http://[fe80::1]:80", (False, "[fe80::1]")),
        ("http://xn--bcher-kva.de", (False, "xn--bcher-kva.de")),
        ("http://a_b.svc", (False, "a_b.svc")),
        ("http://10.0.0.5:9000/", (False, "10.0.0.5:9000")),
        ("  http://h  ", (False, "h")),
        ("http://" + "a" * 63, (False, "a" * 63)),
        ("http://" + ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]), None),  # 253: fits
    ],
)
def test_endpoint_keys(endpoint: str, key: tuple[bool, str] | None) -> None:
    expected = key or (False, endpoint.removeprefix("http://"))
    assert endpoint_key(endpoint) == expected


def not_a_url(endpoint: str, why: str) -> str:
    return f"S3 endpoint {endpoint!r} is not a URL like http://minio:9000 ({why})"


LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])  # 254 characters

MALFORMED = [
    ("http://xn--a.com", "the label 'xn--a' is not valid IDNA"),
    ("http://xn--zz.com", "the label 'xn--zz' is not valid IDNA"),
    ("http://xn--a-ecp.com", "the label 'xn--a-ecp' is not valid IDNA"),  # 'a⒈' maps to 'a1.'
    ("http://xn--", "the label 'xn--' is not a DNS label"),
    ("http://xn--a", "the label 'xn--a' is not valid IDNA"),
    ("http://host:99999", "port '99999' is not a number from 1 to 65535"),
    ("http://host:65536", "port '65536' is not a number from 1 to 65535"),
    ("http://host:0", "port '0' is not a number from 1 to 65535"),
    ("http://host:abc", "port 'abc' is not a number from 1 to 65535"),
    ("http://host:", "port '' is not a number from 1 to 65535"),
    ("http://host:\u0669", "port '\u0669' is not a number from 1 to 65535"),  # Arabic-Indic 9
    ("http://host:123456", "port '123456' is not a number from 1 to 65535"),
    ("http://host:-1", "port '-1' is not a number from 1 to 65535"),
    ("http://[::1", "brackets that do not enclose an IPv6 address"),
    ("http://[zz]", "brackets that do not enclose an IPv6 address"),
    ("http://::1]", "brackets that do not enclose an IPv6 address"),
    ("http://[::1]x", "'x' after the IPv6 address"),
    ("http://[1.2.3.4]", "brackets that do not enclose an IPv6 address"),
    ("http://:80", "no host"),
    ("http://user@", "no host"),
    ("http://.", "no host"),
    ("http://a..b", "an empty label"),
    ("http://.a", "an empty label"),
    ("http://" + "a" * 64 + ".com", "a label longer than 63 characters"),
    ("http://" + LONG_HOST, "a host name longer than 253 characters"),
    ("http://-a.com", "the label '-a' is not a DNS label"),
    ("http://a-.com", "the label 'a-' is not a DNS label"),
    ("http://h\u00e9.com", "the label 'h\u00e9' is not a DNS label"),
    ("http://a!b", "the label 'a!b' is not a DNS label"),
    ("http://a:1:2", "port '1:2' is not a number from 1 to 65535"),
]


@pytest.mark.parametrize(("endpoint", "why"), MALFORMED, ids=[m[0][:40] for m in MALFORMED])
def test_a_malformed_endpoint_is_an_answer_naming_the_field(endpoint: str, why: str) -> None:
    assert endpoint_key(endpoint) == not_a_url(endpoint, why)
    assert s3_endpoint_refusal(with_endpoint(endpoint), config()) == (
        f"spec.output.endpoint: {not_a_url(endpoint, why)}"
    )


def test_what_is_not_a_url_at_all() -> None:
    for endpoint in ("http://", "ftp://h", "https://"):
        assert endpoint_key(endpoint) == (
            f"S3 endpoint {endpoint!r} is not a URL like http://minio:9000"
        )
    assert endpoint_key("http://h/p") == (
        "S3 endpoint 'http://h/p' must not contain a path (got '/p'); put the prefix in "
        "output.prefix"
    )


# ---------------------------------------------------------------------- forbidden addresses

LOOPBACK = "a loopback address"
LINK_LOCAL = "a link-local (cloud metadata) address"
UNSPECIFIED = "an unspecified address"


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("localhost", LOOPBACK),
        ("LOCALHOST.", LOOPBACK),
        ("LocalHost", LOOPBACK),
        ("api.localhost", LOOPBACK),
        ("localhost.localdomain", LOOPBACK),
        ("ip6-localhost", LOOPBACK),
        ("ip6-loopback", LOOPBACK),
        ("\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", LOOPBACK),  # fullwidth
        ("127.0.0.1", LOOPBACK),
        ("127.255.255.254", LOOPBACK),
        ("127.1", LOOPBACK),
        ("0x7f000001", LOOPBACK),
        ("0x7f.1", LOOPBACK),
        ("017700000001", LOOPBACK),  # octal
        ("2130706433", LOOPBACK),
        ("::1", LOOPBACK),
        ("[::1]", LOOPBACK),
        ("[::ffff:127.0.0.1]", LOOPBACK),
        ("::ffff:7f00:1", LOOPBACK),
        ("::127.0.0.1", LOOPBACK),  # IPv4-compatible
        ("64:ff9b::127.0.0.1", LOOPBACK),  # NAT64
        ("2002:7f00:1::", LOOPBACK),  # 6to4
        ("0.0.0.0", UNSPECIFIED),
        ("0", UNSPECIFIED),
        ("0.1.2.3", UNSPECIFIED),  # 0.0.0.0/8 reaches the host on Linux
        ("0.255.255.255", UNSPECIFIED),
        ("::", UNSPECIFIED),
        ("[::]", UNSPECIFIED),
        ("::ffff:0.0.0.0", UNSPECIFIED),
        ("::2", UNSPECIFIED),  # IPv4-compatible 0.0.0.2, in 0.0.0.0/8
        ("169.254.169.254", LINK_LOCAL),
        ("169.254.0.0", LINK_LOCAL),
        ("169.254.255.255", LINK_LOCAL),
        ("2852039166", LINK_LOCAL),
        ("0xa9.0xfe.43518", LINK_LOCAL),
        ("fe80::1", LINK_LOCAL),
        ("[fe80::1]", LINK_LOCAL),
        ("::ffff:169.254.169.254", LINK_LOCAL),
        ("64:ff9b::a9fe:a9fe", LINK_LOCAL),
        ("2002:a9fe:a9fe::", LINK_LOCAL),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("[FD00:EC2::254]", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("::ffff:100.100.100.200", "a cloud metadata address"),
        ("metadata.google.internal", "a cloud metadata service"),
        ("Metadata.Google.Internal.", "a cloud metadata service"),
        ("metadata\u3002google\u3002internal", "a cloud metadata service"),
        ("metadata.goog", "a cloud metadata service"),
        ("metadata", "a cloud metadata service"),
        ("instance-data", "a cloud metadata service"),
        (" metadata ", "a cloud metadata service"),
    ],
)
def test_forbidden_addresses(host: str, why: str) -> None:
    assert forbidden_address(host) == why


@pytest.mark.parametrize(
    "host",
    [
        "minio.s3.svc",
        "10.0.0.5",
        "::ffff:10.0.0.5",
        "1.0.0.0",
        "126.255.255.255",
        "128.0.0.1",
        "169.253.255.255",
        "169.255.0.0",
        "100.100.100.201",
        "fd00:ec2::255",
        "fe7f::1",
        "64:ff9b:1::7f00:1",  # outside NAT64's /96
        "2001:db8::1",
        "s3.amazonaws.com",
        "1e100.net",
        "metadata-store",
        "mylocalhost",
        "localhost.example.com",
        "metadata.google.internal.evil",
        # malformed: an answer, never an exception
        "",
        "[",
        "]",
        "[]",
        "\x00",
        "\ud800",
        "xn--a",
        "xn--",
        "a" * 1000,
        "1.2.3.4.5",
        "0x",
        "..",
    ],
)
def test_ordinary_and_malformed_hosts_are_not_special(host: str) -> None:
    assert forbidden_address(host) is None


# ---------------------------------------------------------------------- S3 endpoint rule


def test_no_endpoint_means_the_platforms() -> None:
    assert s3_endpoint_refusal(spec(), config(allowedS3Endpoints=[])) is None


def test_the_platforms_endpoint_and_listed_ones_pass_in_any_spelling() -> None:
    cfg = config(allowedS3Endpoints=["s3.example.com", "http://store:9000"])
    for same in (PLATFORM_S3, "https://S3.Example.com:443", "http://store:9000/"):
        assert s3_endpoint_refusal(with_endpoint(same), cfg) is None, same


def test_a_broken_entry_never_matches_and_never_hides_the_others() -> None:
    cfg = config(allowedS3Endpoints=["http://bad:99999", "http://good:9000"])
    assert s3_endpoint_refusal(with_endpoint("http://good:9000"), cfg) is None
    assert s3_endpoint_refusal(with_endpoint("http://bad:9999"), cfg) == (
        "spec.output.endpoint: 'http://bad:9999' is not allowed by the platform policy "
        f"(policy.allowedS3Endpoints: http://bad:99999, http://good:9000, {PLATFORM_S3})"
    )


def test_an_endpoint_outside_the_list_is_refused_listing_each_entry_once() -> None:
    cfg = config(allowedS3Endpoints=[PLATFORM_S3, "https://s3.corp"])
    assert s3_endpoint_refusal(with_endpoint("https://s3.attacker.example"), cfg) == (
        "spec.output.endpoint: 'https://s3.attacker.example' is not allowed by the platform "
        f"policy (policy.allowedS3Endpoints: {PLATFORM_S3}, https://s3.corp)"
    )
    bare = config(s3={})
    assert s3_endpoint_refusal(with_endpoint("https://s3.corp"), bare) == (
        "spec.output.endpoint: 'https://s3.corp' is not allowed by the platform policy "
        "(policy.allowedS3Endpoints: none: it is empty and the config has no s3.endpoint)"
    )


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("http://LOCALHOST.:9000", LOOPBACK),
        ("http://127.1", LOOPBACK),
        ("http://0x7f000001", LOOPBACK),
        ("http://2130706433:9000", LOOPBACK),
        ("http://[::1]", LOOPBACK),
        ("http://[::ffff:127.0.0.1]:9000", LOOPBACK),
        ("http://0.0.0.0", UNSPECIFIED),
        ("http://169.254.169.254", LINK_LOCAL),
        ("http://user@169.254.169.254", LINK_LOCAL),
        ("https://metadata.google.internal", "a cloud metadata service"),
    ],
)
def test_loopback_and_metadata_endpoints_say_why(endpoint: str, why: str) -> None:
    assert s3_endpoint_refusal(with_endpoint(endpoint), config()) == (
        f"spec.output.endpoint: {endpoint!r} is {why}, refused by the platform policy unless "
        "listed in policy.allowedS3Endpoints"
    )


def test_an_exact_entry_wins_over_the_address_rule() -> None:
    cfg = config(allowedS3Endpoints=["http://127.0.0.1:9000"])
    assert s3_endpoint_refusal(with_endpoint("http://127.0.0.1:9000"), cfg) is None
    assert s3_endpoint_refusal(with_endpoint("http://127.0.0.1:9001"), cfg) == (
        "spec.output.endpoint: 'http://127.0.0.1:9001' is a loopback address, refused by the "
        "platform policy unless listed in policy.allowedS3Endpoints"
    )


# ---------------------------------------------------------------------- node selector


@pytest.mark.parametrize(
    "key",
    [
        CONTROL_PLANE,
        MASTER,
        "Node-Role.Kubernetes.io/Control-Plane",
        " node-role.kubernetes.io/master",
        "node\u2010role.kubernetes.io/control\u2011plane",
        "node-role.kubernetes.io/control-plane\u200b",
    ],
)
def test_control_plane_keys_in_any_spelling(key: str) -> None:
    assert targets_control_plane(key) is True
    assert node_selector_refusals(with_resources(node_selector={key: ""}), policy()) == [
        f"spec.resources.nodeSelector: key {key!r} is not allowed by the platform policy "
        f"({UNSET_SELECTOR_RULE})"
    ]


def test_other_node_selector_keys_pass_by_default() -> None:
    keys = {"gpu": "a100", "node-role.kubernetes.io/worker": "", "kubernetes.io/hostname": "n1"}
    assert [k for k in keys if targets_control_plane(k)] == []
    assert node_selector_refusals(with_resources(node_selector=keys), policy()) == []
    assert node_selector_refusals(spec(), policy(allowedNodeSelectorKeys=[])) == []


def test_each_refused_key_is_named_in_order() -> None:
    selector = {MASTER: "", "gpu": "a100", CONTROL_PLANE: "true"}
    refusals = node_selector_refusals(with_resources(node_selector=selector), policy())
    assert [r.split(" is not")[0] for r in refusals] == [
        f"spec.resources.nodeSelector: key {MASTER!r}",
        f"spec.resources.nodeSelector: key {CONTROL_PLANE!r}",
    ]


def test_a_node_selector_allow_list_matches_exactly() -> None:
    listed = policy(allowedNodeSelectorKeys=["gpu", "zone"])
    assert (
        node_selector_refusals(with_resources(node_selector={"gpu": "x", "zone": "a"}), listed)
        == []
    )
    assert node_selector_refusals(
        with_resources(node_selector={"GPU": "x", "gpu": "y"}), listed
    ) == [
        "spec.resources.nodeSelector: key 'GPU' is not allowed by the platform policy "
        "(policy.allowedNodeSelectorKeys: gpu, zone)"
    ]
    assert node_selector_refusals(
        with_resources(node_selector={"gpu": "x"}), policy(allowedNodeSelectorKeys=[])
    ) == [
        "spec.resources.nodeSelector: key 'gpu' is not allowed by the platform policy "
        "(policy.allowedNodeSelectorKeys: none)"
    ]
    # the platform may list a control-plane key itself
    explicit = policy(allowedNodeSelectorKeys=[CONTROL_PLANE])
    assert node_selector_refusals(with_resources(node_selector={CONTROL_PLANE: ""}), explicit) == []


# ---------------------------------------------------------------------- tolerations


def toleration(**fields: Any) -> Toleration:
    return Toleration.model_validate(fields)


EVERYTHING = toleration(operator="Exists")
GPU_TAINT = toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


@pytest.mark.parametrize(
    ("given", "allowed"),
    [
        (EVERYTHING, False),
        (toleration(key="", operator="Exists"), False),
        (toleration(key=" ", operator="Exists"), False),
        (toleration(operator="Exists", effect="NoSchedule"), False),
        (toleration(key=CONTROL_PLANE, operator="Exists", effect="NoSchedule"), False),
        (toleration(key=MASTER, operator="Equal", value="", effect="NoSchedule"), False),
        (toleration(key="Node-Role.Kubernetes.io/Master", operator="Exists"), False),
        (GPU_TAINT, True),
        (toleration(key="dedicated", operator="Equal", value="ml"), True),
    ],
)
def test_tolerations_by_default(given: Toleration, allowed: bool) -> None:
    assert toleration_allowed(given, policy()) is allowed


def test_a_toleration_refusal_names_its_index_and_what_it_matches() -> None:
    tolerations = [GPU_TAINT, EVERYTHING, toleration(key=CONTROL_PLANE, effect="NoSchedule")]
    assert toleration_refusals(with_resources(tolerations=tolerations), policy()) == [
        "spec.resources.tolerations[1]: {'operator': 'Exists'} (no key: it matches every taint) "
        f"is not allowed by the platform policy ({UNSET_TOLERATION_RULE})",
        "spec.resources.tolerations[2]: {'key': 'node-role.kubernetes.io/control-plane', "
        "'effect': 'NoSchedule'} is not allowed by the platform policy "
        f"({UNSET_TOLERATION_RULE})",
    ]
    assert toleration_refusals(spec(), policy(allowedTolerations=[])) == []


def test_a_toleration_allow_list_checks_key_and_effect() -> None:
    listed = policy(
        allowedTolerations=[
            {"key": "nvidia.com/gpu", "effects": ["NoSchedule"]},
            {"key": "dedicated"},
        ]
    )
    allowed = [
        GPU_TAINT,
        toleration(key="dedicated", operator="Equal", value="ml", effect="NoExecute"),
        toleration(key="dedicated", operator="Exists"),  # no effect: the rule allows any
    ]
    for given in allowed:
        assert toleration_allowed(given, listed) is True, given
    refused = [
        toleration(key="nvidia.com/gpu", operator="Exists", effect="NoExecute"),
        toleration(key="nvidia.com/gpu", operator="Exists"),  # no effect = every effect
        toleration(key="Dedicated", operator="Exists"),
        EVERYTHING,
    ]
    for given in refused:
        assert toleration_allowed(given, listed) is False, given
    (refusal,) = toleration_refusals(with_resources(tolerations=[refused[0]]), listed)
    assert refusal == (
        "spec.resources.tolerations[0]: {'key': 'nvidia.com/gpu', 'operator': 'Exists', "
        "'effect': 'NoExecute'} is not allowed by the platform policy (policy.allowedTolerations: "
        "nvidia.com/gpu (NoSchedule), dedicated (any effect))"
    )
    (refusal,) = toleration_refusals(
        with_resources(tolerations=[GPU_TAINT]), policy(allowedTolerations=[])
    )
    assert refusal.endswith("(policy.allowedTolerations: none)")
    two = policy(allowedTolerations=[{"key": "a", "effects": ["NoSchedule", "NoExecute"]}])
    (refusal,) = toleration_refusals(with_resources(tolerations=[EVERYTHING]), two)
    assert refusal.endswith("(policy.allowedTolerations: a (NoSchedule/NoExecute))")


def test_toleration_rules_are_checked_in_the_config() -> None:
    with pytest.raises(ValidationError, match="allowedTolerations"):
        policy(allowedTolerations=[{"key": ""}])
    with pytest.raises(ValidationError, match="allowedTolerations"):
        policy(allowedTolerations=[{"key": "a", "effects": ["Sometimes"]}])
    with pytest.raises(ValidationError, match="allowedTolerations"):
        policy(allowedTolerations=[{"key": "a", "effect": "NoSchedule"}])  # a typo is an error


# ---------------------------------------------------------------------- credentials Secret


def test_which_secret_needs_the_opt_in() -> None:
    named = spec(**{"output.credentialsSecret": {"name": "team-s3"}})
    platform = spec(**{"output.credentialsSecret": {"name": "platform-s3"}})
    assert secret_needing_opt_in(spec(), config()) is None
    assert secret_needing_opt_in(named, config()) == "team-s3"
    assert secret_needing_opt_in(platform, config()) is None
    assert secret_needing_opt_in(named, config(requireSecretOptIn=False)) is None
    no_default = config(s3={"endpoint": PLATFORM_S3})
    assert secret_needing_opt_in(platform, no_default) == "platform-s3"


def opt_in_refusals(labels: dict[str, str] | None, *, metadata: bool = True) -> list[str]:
    kube = FakeKube()
    body: dict[str, Any] = {"data": {}}
    body["metadata"] = {"name": "team-s3", "namespace": "team"}
    if labels is not None:
        body["metadata"]["labels"] = labels
    kube.put(SECRETS, body)
    if not metadata:
        body["metadata"] = {"name": "team-s3"}
        kube.objects[SECRETS]["team-s3"] = {**body, "metadata": None}
    named = spec(**{"output.credentialsSecret": {"name": "team-s3"}})
    return asyncio.run(policy_refusals(kube, "team", named, config()))


REFUSED = (
    "spec.output.credentialsSecret: Secret 'team-s3' is not usable as job credentials by the "
    f"platform policy (policy.requireSecretOptIn: the Secret must carry the label {LABEL}=true)"
)


@pytest.mark.parametrize(
    ("labels", "refused"),
    [
        ({LABEL: "true"}, False),
        ({LABEL: "True"}, True),
        ({LABEL: "true "}, True),
        ({LABEL: "TRUE"}, True),
        ({LABEL: "1"}, True),
        ({LABEL: ""}, True),
        ({"other": "true"}, True),
        ({}, True),
        (None, True),
    ],
)
def test_only_the_exact_label_value_true_opts_in(
    labels: dict[str, str] | None, refused: bool
) -> None:
    assert opt_in_refusals(labels) == ([REFUSED] if refused else [])


def test_a_secret_without_metadata_is_refused() -> None:
    assert opt_in_refusals(None, metadata=False) == [REFUSED]


def test_a_missing_secret_is_named_with_its_namespace() -> None:
    kube = FakeKube()
    named = spec(**{"output.credentialsSecret": {"name": "team-s3"}})
    cfg = config(secretOptInLabel="corp.example/ml")
    assert asyncio.run(policy_refusals(kube, "team", named, cfg)) == [
        "spec.output.credentialsSecret: Secret 'team-s3' not found in team "
        "(policy.requireSecretOptIn: the Secret must carry the label corp.example/ml=true)"
    ]


def test_no_secret_read_when_none_needs_the_opt_in() -> None:
    kube = FakeKube()
    assert asyncio.run(policy_refusals(kube, "team", spec(), config())) == []
    assert kube.calls == []


# ---------------------------------------------------------------------- all at once


def test_every_refusal_in_a_fixed_order() -> None:
    parsed = spec(
        trainerImage="evil/img:1",
        **{
            "output.endpoint": "http://169.254.169.254",
            "output.credentialsSecret": {"name": "db"},
            "resources.priorityClassName": "system-node-critical",
            "resources.nodeSelector": {MASTER: "", CONTROL_PLANE: ""},
            "resources.tolerations": [{"operator": "Exists"}],
        },
    )
    found = asyncio.run(policy_refusals(FakeKube(), "team", parsed, config()))
    assert [r.split(":", 1)[0] for r in found] == [
        "spec.trainerImage",
        "spec.output.endpoint",
        "spec.resources.priorityClassName",
        "spec.resources.nodeSelector",
        "spec.resources.nodeSelector",
        "spec.resources.tolerations[0]",
        "spec.output.credentialsSecret",
    ]
    assert spec_refusals(parsed, config()) == found[:-1]
    assert spec_refusals(spec(), config()) == []


def test_a_shared_secret_read_is_used_instead_of_a_get() -> None:
    """The reconcile passes its own reader (one Secret GET per resync): the policy asks it,
    by name, and makes no API call of its own."""
    kube = FakeKube()
    asked: list[str] = []

    async def read(name: str) -> dict[str, Any] | None:
        asked.append(name)
        return {"metadata": {"name": name, "labels": {LABEL: "true"}}} if name == "ok" else None

    ok = spec(**{"output.credentialsSecret": {"name": "ok"}})
    missing = spec(**{"output.credentialsSecret": {"name": "gone"}})
    assert asyncio.run(policy_refusals(kube, "team", ok, config(), read)) == []
    assert asyncio.run(policy_refusals(kube, "team", missing, config(), read)) == [
        "spec.output.credentialsSecret: Secret 'gone' not found in team "
        f"(policy.requireSecretOptIn: the Secret must carry the label {LABEL}=true)"
    ]
    assert asked == ["ok", "gone"] and kube.calls == []
