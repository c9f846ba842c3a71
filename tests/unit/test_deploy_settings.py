"""Where a pod reaches the gateway: the public URL, or the local pods' own (containers)."""

from __future__ import annotations

from services.deploy.settings import DeploySettings


def settings(**values: str) -> DeploySettings:
    return DeploySettings.model_validate({"public_url": "http://127.0.0.1:8080/", **values})


def test_every_pod_uses_the_public_url_by_default() -> None:
    plain = settings()
    link = "http://127.0.0.1:8080/v1/dataset-downloads/tok"
    for provider in ("local", "runpod"):
        assert plain.api_url(provider) == "http://127.0.0.1:8080"
        assert plain.pod_url(provider, link) == link


def test_local_pods_reach_the_gateway_by_their_own_url() -> None:
    inside = settings(local_api_url="http://gateway:8080/")
    link = "http://127.0.0.1:8080/v1/dataset-downloads/tok"
    assert inside.api_url("local") == "http://gateway:8080"
    assert inside.pod_url("local", link) == "http://gateway:8080/v1/dataset-downloads/tok"
    # RunPod's pods are out on the internet: the public URL, always.
    assert inside.api_url("runpod") == "http://127.0.0.1:8080"
    assert inside.pod_url("runpod", link) == link


def test_a_url_elsewhere_is_left_alone() -> None:
    inside = settings(local_api_url="http://gateway:8080")
    for url in ("https://bucket.s3.amazonaws.com/x?sig", "http://127.0.0.1:80800/v1/x"):
        assert inside.pod_url("local", url) == url
