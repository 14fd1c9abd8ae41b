"""Names and checks of the Kubernetes export (corral.porting.k8s), pure."""

from __future__ import annotations

import pytest
import yaml

from corral.porting import k8s
from corral.spec import load_target


def test_labels_are_dns_1035() -> None:
    assert k8s.label("web") == "web"
    assert k8s.label("api_v2.internal") == "api-v2-internal"
    assert k8s.label("9lives") == "svc-9lives"
    assert k8s.label("a" * 80) == "a" * 63
    assert k8s.label("x--y__") == "x-y"


@pytest.mark.parametrize("group", ["Prod", "prod_1", "-x", "x-", "a" * 49, ""])
def test_a_group_that_cannot_name_the_objects_is_refused(group: str) -> None:
    with pytest.raises(k8s.ExportError):
        k8s.check_group(group)


def test_a_group_of_the_longest_allowed_name_is_taken() -> None:
    assert k8s.check_group("a" * 48) == "a" * 48


def test_services_whose_names_collide_in_kubernetes_are_refused() -> None:
    text = ("processes: []\nservices:\n  - {name: web_a, on: ':8000'}\n"
            "  - {name: web.a, on: ':8001'}\n")
    with pytest.raises(k8s.ExportError, match="'web-a' is taken"):
        k8s.manifests(load_target(text, "t"), text, k8s.Options())


def test_secret_values_are_base64_and_the_target_text_is_kept_verbatim() -> None:
    text = "processes:\n  - name: a\n    command: [x, '${B}', '${A}']\n"
    out, warnings = k8s.manifests(load_target(text, "t"), text,
                                  k8s.Options(secret_values={"A": "é", "B": "b"}))
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs[0]["data"]["target.yaml"] == text
    assert docs[1]["data"] == {"A": "w6k=", "B": "Yg=="}
    assert warnings == []
    assert "&id" not in out  # no YAML anchors: manifests as people write them


def test_an_oversized_target_is_refused() -> None:
    text = "processes: []\n" + "#" * k8s.MAX_CONFIGMAP
    with pytest.raises(k8s.ExportError, match="1 MiB"):
        k8s.manifests(load_target(text, "t"), text, k8s.Options())
