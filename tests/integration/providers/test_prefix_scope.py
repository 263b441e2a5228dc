"""Two controllers sharing a cloud account must never take each other's CVMs for orphans."""

from __future__ import annotations

from duet.providers import controller_scoped


def test_each_controller_gets_its_own_prefix_unless_one_is_set() -> None:
    first = controller_scoped("azure", {}, "a" * 64)
    second = controller_scoped("azure", {}, "b" * 64)
    assert first["DUET_AZURE_PREFIX"] != second["DUET_AZURE_PREFIX"]
    assert controller_scoped("aws", {}, "a" * 64)["DUET_AWS_PREFIX"] == "duet-aaaaaaaa"
    assert controller_scoped("gcp", {}, "c" * 64)["DUET_GCP_PREFIX"] == "duet-cccccccc"


def test_a_prefix_the_operator_set_wins() -> None:
    assert controller_scoped("azure", {"PREFIX": "shop"}, "a" * 64) == {"PREFIX": "shop"}
    assert controller_scoped("gcp", {"DUET_GCP_PREFIX": "x"}, "a" * 64) == {"DUET_GCP_PREFIX": "x"}
    assert controller_scoped("local", {}, "a" * 64) == {}
