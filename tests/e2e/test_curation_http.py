"""The loop from LLM-ops back to fine-tuning, end to end with real processes on both databases:
an app instrumented with the OpenTelemetry SDK sends 200 traces (100 questions, each answered
once well and once badly; a credential pasted into some prompts); an eval rule judges them as
they arrive with deterministic validators and offline groundedness; curation makes an SFT
dataset of the passing answers (through the CLI) and a DPO dataset of the pairs (over HTTP);
the local provider trains on each to `succeeded` with a falling loss; and a row's provenance
leads back to its trace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Suite
from tests.e2e.test_deploy_local import TERMINAL, wait_until

pytestmark = pytest.mark.e2e

USER = "curator"
QUESTIONS = 100
PLANTED = "sk-proj-" + "Zq8" * 16
VALIDATORS = [{"kind": "contains", "name": "paris", "params": {"value": "Paris"}}]


def landmark(i: int) -> str:
    return f"Landmark {i}"


def instrumented_app(suite: Suite) -> None:
    """Per question, two traces (a chain, its retrieval and the GenAI chat call): one answer
    grounded in the retrieved document, one not."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(
        endpoint=f"{suite.url}/v1/traces",
        headers={"Authorization": f"Bearer {suite.token(USER)}"},
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "travel-app"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=256))
    tracer = provider.get_tracer("e2e")
    for i in range(QUESTIONS):
        document = f"{landmark(i)} stands in Paris, France, by the river Seine."
        question = f"Where is {landmark(i)}?"
        if i % 10 == 0:  # the user pasted a credential into the prompt
            question += f" (my key is {PLANTED})"
        for variant, answer in (
            ("good", f"{landmark(i)} stands in Paris, France."),
            ("bad", f"{landmark(i)} is on the Moon, built in 3000 BC."),
        ):
            with tracer.start_as_current_span(f"{variant}-{i}") as root:
                root.set_attribute("openinference.span.kind", "CHAIN")
                root.set_attribute("session.id", f"session-{i % 20}")
                with tracer.start_as_current_span("retrieve") as retrieve:
                    retrieve.set_attribute("openinference.span.kind", "RETRIEVER")
                    retrieve.set_attribute("retrieval.documents.0.document.content", document)
                with tracer.start_as_current_span("chat gpt-4o") as chat:
                    chat.set_attribute("gen_ai.operation.name", "chat")
                    chat.set_attribute("gen_ai.provider.name", "openai")
                    chat.set_attribute("gen_ai.request.model", "gpt-4o")
                    chat.set_attribute("session.id", f"session-{i % 20}")
                    messages = [
                        {"role": "system", "content": "You answer travel questions briefly."},
                        {"role": "user", "content": question},
                    ]
                    chat.set_attribute("gen_ai.input.messages", json.dumps(messages))
                    chat.set_attribute(
                        "gen_ai.output.messages",
                        json.dumps([{"role": "assistant", "content": answer}]),
                    )
    provider.force_flush()
    provider.shutdown()


def until(check: Any, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.3)


def curation_done(client: httpx.Client, curation_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        found: dict[str, Any] = client.get(f"/v1/curations/{curation_id}").json()
        return found if found["state"] not in ("queued", "running") else None

    result: dict[str, Any] = until(ended)
    return result


def rows(client: httpx.Client, dataset_id: str) -> tuple[bytes, list[dict[str, Any]]]:
    """The dataset as a pod downloads it: through a download link."""
    link = client.post(f"/v1/datasets/{dataset_id}/download-tokens", json={}).json()
    data = httpx.get(link["url"], timeout=30).content
    return data, [json.loads(line) for line in data.splitlines() if line.strip()]


def train(client: httpx.Client, dataset_id: str, method: str) -> list[float]:
    created = client.post(
        "/v1/deployments",
        json={
            "provider": "local",
            "dataset_id": dataset_id,
            "method": method,
            "hyperparameters": {"epochs": 3, "batch_size": 8},
            "limits": {"max_runtime_minutes": 10, "max_cost_usd": 1},
        },
    )
    assert created.status_code == 201, created.text
    done = wait_until(client, created.json()["id"], TERMINAL, seconds=240)
    assert done["state"] == "succeeded", done
    metrics = client.get(f"/v1/deployments/{done['id']}/metrics").json()["metrics"]
    return [m["progress"]["loss"] for m in metrics]


@pytest.mark.containers
def test_judged_traces_become_datasets_that_train(suite: Suite) -> None:
    suite.remember(PLANTED)
    client = suite.client(USER)
    rule = client.post(
        "/v1/eval-rules",
        json={
            "name": "travel answers",
            "filter": {"kind": "llm"},
            "validators": VALIDATORS,
            "groundedness": {"method": "offline"},
        },
    )
    assert rule.status_code in (200, 201), rule.text
    rule_id = rule.json()["rule"]["id"]
    instrumented_app(suite)

    def judged() -> bool:
        found = client.get(f"/v1/eval-rules/{rule_id}").json()["rule"]
        return int(found.get("spans_judged", 0)) == 2 * QUESTIONS

    until(judged, seconds=180)
    summary = client.get("/v1/evaluations/summary", params={"rule_id": rule_id}).json()
    assert int(summary["rows"][0]["passed"]) == QUESTIONS  # the good answers only

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tunelab_cli", "--url", suite.url]
        command += ["--token", suite.token(USER), "datasets", *args]
        return subprocess.run(command, env=suite.env, capture_output=True, text=True, timeout=180)

    # A dry run first, as a user would: the counts and a sample, nothing stored.
    dry = cli("curate", "--format", "sft", "--passed", "--filter", "tag=none", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "succeeded: 0 spans read" in dry.stdout  # no span carries that tag
    dry = cli("curate", "--format", "sft", "--passed", "--rule", rule_id, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"{2 * QUESTIONS} spans read, {QUESTIONS} met the conditions" in dry.stdout
    assert '"role": "assistant"' in dry.stdout  # the sample rows
    assert client.get("/v1/datasets").json()["datasets"] == []

    # SFT through the CLI: the passing answers.
    made = cli("curate", "--format", "sft", "--passed", "--rule", rule_id, "--min-grounded", "0.7")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "train on it: tunelab deploy create ds_" in made.stdout
    curation_id = made.stdout.split()[1]
    sft = client.get(f"/v1/curations/{curation_id}").json()
    assert sft["state"] == "succeeded", sft
    assert int(sft["progress"]["rows"]) == QUESTIONS
    assert int(sft["progress"]["spans_read"]) == 2 * QUESTIONS
    data, sft_rows = rows(client, sft["dataset_id"])
    assert PLANTED.encode() not in data  # masked at ingest, and never unmasked
    assert all("Paris" in r["messages"][-1]["content"] for r in sft_rows)
    assert [m["role"] for m in sft_rows[0]["messages"]] == ["system", "user", "assistant"]
    dataset = client.get(f"/v1/datasets/{sft['dataset_id']}").json()
    assert dataset["format"] == "sft_chat"
    assert int(dataset["row_count"]) == QUESTIONS

    # DPO over HTTP: each question's good answer against its bad one.
    dpo_made = client.post(
        "/v1/curations",
        json={
            "format": "dpo",
            "conditions": {"passed": True, "rule_id": rule_id},
            "options": {"margin": 0.5, "eval_fraction": 0.1},
        },
    )
    assert dpo_made.status_code == 201, dpo_made.text
    dpo = curation_done(client, dpo_made.json()["id"])
    assert dpo["state"] == "succeeded", dpo
    assert int(dpo["progress"]["rows"]) + int(dpo["progress"]["eval_rows"]) == QUESTIONS
    _, dpo_rows = rows(client, dpo["dataset_id"])
    for row in dpo_rows:
        assert "Paris" in row["chosen"][0]["content"]
        assert "Moon" in row["rejected"][0]["content"]

    # Each trains on the local provider, its loss falling.
    sft_losses = train(client, sft["dataset_id"], "sft")
    assert len(sft_losses) >= 2, sft_losses
    assert sft_losses[-1] < 0.8 * sft_losses[0], sft_losses
    dpo_losses = train(client, dpo["dataset_id"], "dpo")
    assert len(dpo_losses) >= 2, dpo_losses
    assert dpo_losses[-1] < dpo_losses[0], dpo_losses

    # A row leads back to the trace it came from.
    origin = client.get(f"/v1/datasets/{sft['dataset_id']}/provenance", params={"line": 7})
    assert origin.status_code == 200, origin.text
    [where] = origin.json()["rows"]
    assert origin.json()["curation"]["id"] == sft["id"]
    trace = client.get(f"/v1/traces/{where['trace_id']}").json()
    stack = list(trace["roots"])
    spans = []
    while stack:
        node = stack.pop()
        spans.append(node["span"])
        stack.extend(node.get("children", []))
    [chat] = [s for s in spans if s["span_id"] == where["span_id"]]
    assert chat["output"][0]["content"] == sft_rows[6]["messages"][-1]["content"]
    assert any(s["name"].startswith("good-") for s in spans)
    shown = cli("provenance", sft["dataset_id"], "--line", "7")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"line 7: trace {where['trace_id']} span {where['span_id']}"
    # Another user sees neither the curation nor the provenance.
    mallory = suite.client("mallory")
    assert mallory.get(f"/v1/curations/{sft['id']}").status_code == 404
    assert mallory.get(f"/v1/datasets/{sft['dataset_id']}/provenance").status_code == 404
