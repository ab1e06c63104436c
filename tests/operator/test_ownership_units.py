"""ownership.py, unit by unit (the `ownership` mutation target): which owner reference is the
controller, when an object counts as this LoRAJob's, the NameConflict wording, and what
create_owned / delete_owned write or leave alone, on the in-memory API server. Expected values
are written out by hand from the Kubernetes rules (at most one controller reference; a name
match is never ownership)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fake_kube import FakeKube

from lora_operator.controller.kube import KubeError
from lora_operator.controller.ownership import (
    NameConflict,
    controlled_by,
    controller_reference,
    create_owned,
    delete_owned,
    owner_description,
)

UID = "uid-mine"
OTHER = "uid-other"
CONFIG_MAPS = "/api/v1/namespaces/team/configmaps"


def ref(
    uid: str, *, controller: bool | None = True, kind: str = "LoRAJob", name: str = "j"
) -> dict[str, Any]:
    reference: dict[str, Any] = {"apiVersion": "x/v1", "kind": kind, "name": name, "uid": uid}
    if controller is not None:
        reference["controller"] = controller
    return reference


def obj(*references: Any, name: str = "j-r1") -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "team", "ownerReferences": list(references)},
    }


# ---------------------------------------------------------------------- controller reference


def test_no_metadata_or_no_references_means_no_controller() -> None:
    assert controller_reference({}) is None
    assert controller_reference({"metadata": None}) is None
    assert controller_reference({"metadata": {}}) is None
    assert controller_reference({"metadata": {"ownerReferences": None}}) is None
    assert controller_reference(obj()) is None


def test_only_a_reference_with_controller_true_is_the_controller() -> None:
    owner_only = ref(UID, controller=None)
    not_controller = ref(UID, controller=False)
    assert controller_reference(obj(owner_only, not_controller)) is None
    controller = ref(OTHER, kind="Deployment", name="d")
    assert controller_reference(obj(owner_only, controller)) == controller
    assert controller_reference(obj("junk", 7, None, controller)) == controller  # not dicts


def test_the_first_controller_reference_wins() -> None:
    first, second = ref(OTHER, name="first"), ref(UID, name="second")
    assert controller_reference(obj(first, second)) == first


def test_controlled_by_needs_the_controller_reference_with_this_uid() -> None:
    assert controlled_by(obj(ref(UID)), UID) is True
    assert controlled_by(obj(ref(OTHER)), UID) is False  # another controller's uid
    assert controlled_by(obj(ref(UID, controller=None)), UID) is False  # owner, not controller
    assert controlled_by(obj(ref(UID, controller=False)), UID) is False
    assert controlled_by(obj(), UID) is False
    assert controlled_by(obj(ref(UID, controller=False), ref(UID)), UID) is True


def test_an_empty_uid_controls_nothing() -> None:
    """A LoRAJob body without a uid must not match a reference that lacks one too."""
    no_uid = {"apiVersion": "x/v1", "kind": "LoRAJob", "name": "j", "controller": True}
    assert controlled_by(obj(no_uid), "") is False
    assert controlled_by(obj(ref("")), "") is False
    assert controlled_by(obj(no_uid), UID) is False


def test_owner_description_in_words() -> None:
    assert owner_description(obj()) == "it has no controller owner"
    assert owner_description(obj(ref(UID, controller=False))) == "it has no controller owner"
    assert owner_description(obj(ref(OTHER, kind="Deployment", name="web"))) == (
        "it is controlled by Deployment web (uid uid-other)"
    )
    assert owner_description(obj({"controller": True})) == ("it is controlled by object ? (uid ?)")


# ---------------------------------------------------------------------- NameConflict


def test_name_conflict_message_and_fields() -> None:
    conflict = NameConflict.of(obj(ref(OTHER, kind="Deployment", name="web")), "ConfigMap")
    assert (conflict.kind, conflict.namespace, conflict.name) == ("ConfigMap", "team", "j-r1")
    assert conflict.owner == "it is controlled by Deployment web (uid uid-other)"
    expected = (
        "ConfigMap team/j-r1 already exists and is not owned by this LoRAJob (it is controlled "
        "by Deployment web (uid uid-other)); the operator leaves it untouched. Delete or rename "
        "that ConfigMap, or give the LoRAJob another name"
    )
    assert conflict.message() == expected == str(conflict)


def test_name_conflict_of_an_object_without_metadata() -> None:
    conflict = NameConflict.of({}, "Secret")
    assert (conflict.namespace, conflict.name) == ("", "")
    assert str(conflict).startswith("Secret / already exists and is not owned by this LoRAJob")


# ---------------------------------------------------------------------- create_owned


def body(name: str = "j-r1", kind: str | None = "ConfigMap") -> dict[str, Any]:
    made: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "team", "ownerReferences": [ref(UID)]},
        "data": {"k": "new"},
    }
    if kind:
        made["kind"] = kind
    return made


def test_create_owned_creates_a_new_object() -> None:
    kube = FakeKube()
    made, created = asyncio.run(create_owned(kube, "v1/configmaps", "team", body(), UID))
    assert created is True and made["data"] == {"k": "new"}
    stored = kube.obj(CONFIG_MAPS, "j-r1")
    assert stored is not None and stored["data"] == {"k": "new"}


def test_create_owned_returns_our_existing_object_unchanged() -> None:
    kube = FakeKube()
    ours = obj(ref(UID))
    ours["data"] = {"k": "old"}
    kube.put(CONFIG_MAPS, ours)
    before = copy.deepcopy(ours)
    made, created = asyncio.run(create_owned(kube, "v1/configmaps", "team", body(), UID))
    assert created is False and made == before
    assert kube.obj(CONFIG_MAPS, "j-r1") == before


@pytest.mark.parametrize(
    ("references", "owner"),
    [
        ((), "it has no controller owner"),
        ((ref(OTHER),), "it is controlled by LoRAJob j (uid uid-other)"),
        ((ref(UID, controller=False),), "it has no controller owner"),
    ],
)
def test_create_owned_refuses_a_squatter_and_writes_nothing(
    references: tuple[dict[str, Any], ...], owner: str
) -> None:
    kube = FakeKube()
    squatter = obj(*references)
    squatter["data"] = {"k": "theirs"}
    kube.put(CONFIG_MAPS, squatter)
    before = copy.deepcopy(squatter)
    with pytest.raises(NameConflict) as conflict:
        asyncio.run(create_owned(kube, "v1/configmaps", "team", body(), UID))
    assert conflict.value.kind == "ConfigMap" and conflict.value.owner == owner
    assert kube.obj(CONFIG_MAPS, "j-r1") == before
    assert [call[-1] for call in kube.calls] == ["create", "get"]


def test_create_owned_names_the_resource_when_the_body_has_no_kind() -> None:
    kube = FakeKube()
    kube.put(CONFIG_MAPS, obj())
    with pytest.raises(NameConflict) as conflict:
        asyncio.run(create_owned(kube, "v1/configmaps", "team", body(kind=None), UID))
    assert conflict.value.kind == "configmaps"


# ---------------------------------------------------------------------- delete_owned


def test_delete_owned_of_an_absent_object_is_false() -> None:
    kube = FakeKube()
    assert asyncio.run(delete_owned(kube, "v1/configmaps", "team", "j-r1", UID)) is False
    assert [call[-1] for call in kube.calls] == ["get"]


def test_delete_owned_deletes_ours_with_a_uid_precondition() -> None:
    kube = FakeKube()
    ours = obj(ref(UID))
    ours["metadata"]["uid"] = "object-uid"
    kube.put(CONFIG_MAPS, ours)
    assert asyncio.run(delete_owned(kube, "v1/configmaps", "team", "j-r1", UID)) is True
    assert kube.obj(CONFIG_MAPS, "j-r1") is None


@pytest.mark.parametrize("references", [(), (ref(OTHER),), (ref(UID, controller=False),)], ids=str)
def test_delete_owned_leaves_what_it_does_not_control(
    references: tuple[dict[str, Any], ...],
) -> None:
    kube = FakeKube()
    theirs = obj(*references)
    theirs["metadata"]["uid"] = "object-uid"
    kube.put(CONFIG_MAPS, theirs)
    before = copy.deepcopy(theirs)
    with pytest.raises(NameConflict) as conflict:
        asyncio.run(delete_owned(kube, "v1/configmaps", "team", "j-r1", UID))
    assert conflict.value.kind == "ConfigMap"
    assert kube.obj(CONFIG_MAPS, "j-r1") == before
    assert "delete" not in [call[-1] for call in kube.calls]


def test_delete_owned_names_the_resource_when_the_object_has_no_kind() -> None:
    kube = FakeKube()
    theirs = obj()
    del theirs["kind"]
    kube.put(CONFIG_MAPS, theirs)
    with pytest.raises(NameConflict) as conflict:
        asyncio.run(delete_owned(kube, "v1/configmaps", "team", "j-r1", UID))
    assert conflict.value.kind == "configmaps"


class ReplacedBeforeDelete(FakeKube):
    """Between delete_owned's read and its delete, the object is recreated (another uid), or
    the server fails."""

    def __init__(self, status: int | None = None) -> None:
        super().__init__()
        self.status = status

    async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "DELETE":
            if self.status is not None:
                raise KubeError(self.status, "boom")
            self.objects[CONFIG_MAPS]["j-r1"]["metadata"]["uid"] = "recreated-uid"
        return await super().request(method, path, *args, **kwargs)


def test_delete_owned_of_an_object_replaced_meanwhile_is_false_and_keeps_it() -> None:
    kube = ReplacedBeforeDelete()
    ours = obj(ref(UID))
    ours["metadata"]["uid"] = "object-uid"
    kube.put(CONFIG_MAPS, ours)
    assert asyncio.run(delete_owned(kube, "v1/configmaps", "team", "j-r1", UID)) is False
    kept = kube.obj(CONFIG_MAPS, "j-r1")
    assert kept is not None and kept["metadata"]["uid"] == "recreated-uid"


def test_delete_owned_passes_other_errors_on() -> None:
    kube = ReplacedBeforeDelete(status=500)
    kube.put(CONFIG_MAPS, obj(ref(UID)))
    with pytest.raises(KubeError) as error:
        asyncio.run(delete_owned(kube, "v1/configmaps", "team", "j-r1", UID))
    assert error.value.status == 500


def test_a_grouped_resource_is_named_by_its_plural_alone() -> None:
    """'batch/v1/jobs' -> 'jobs' (not 'v1/jobs'), when neither body nor object has a kind."""
    kube = FakeKube()
    squatter = obj(name="j-r1")
    del squatter["kind"]
    kube.put("/apis/batch/v1/namespaces/team/jobs", squatter)
    with pytest.raises(NameConflict) as created:
        asyncio.run(create_owned(kube, "batch/v1/jobs", "team", body(kind=None), UID))
    with pytest.raises(NameConflict) as deleted:
        asyncio.run(delete_owned(kube, "batch/v1/jobs", "team", "j-r1", UID))
    assert created.value.kind == deleted.value.kind == "jobs"
    assert str(deleted.value).startswith("jobs team/j-r1 already exists")
