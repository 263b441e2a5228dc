"""The API describes itself: OpenAPI at /openapi.json, browsable at /docs."""

from __future__ import annotations

import httpx

from duet.testing.process import ControllerProcess


def test_openapi_lists_every_v1_route(controller: ControllerProcess) -> None:
    spec = httpx.get(controller.url + "/openapi.json", timeout=10).json()
    routes = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert {
        ("POST", "/v1/cvms"),
        ("POST", "/v1/cvms/{cvm_id}/run"),
        ("POST", "/v1/cvms/{cvm_id}/mark"),
        ("POST", "/v1/cvms/{cvm_id}/stop"),
        ("GET", "/v1/cvms"),
        ("GET", "/v1/cvms/{cvm_id}"),
        ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/ledger/head"),
        ("GET", "/v1/ledger/entries"),
        ("GET", "/v1/ledger/proof/inclusion"),
        ("GET", "/v1/ledger/proof/consistency"),
        ("GET", "/v1/blobs/{sha256}"),
        ("GET", "/v1/events"),
        ("GET", "/v1/attestation"),
    } <= routes
    docs = httpx.get(controller.url + "/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
