"""Property-based API test: schemathesis generates requests from /openapi.json and calls the app in-process.

No generated request may get a 5xx, and every response must match the status codes, media types
and JSON schemas the spec documents. Explanations run in-process on the tiny model (no workers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pneumolens.service import ServeSettings, create_app  # noqa: E402
from pneumolens.service.dependencies import get_explain_pool  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Generated requests per operation: enough to cover every field's edge values, bounded in time.
EXAMPLES = 30


class InProcessPool:
    """Runs the real explanation job in this process (the worker processes have their own tests)."""

    def __init__(self, model) -> None:
        self.context = {"model": model, "forward": None}

    def run(self, payload: dict):
        from pneumolens.service.explaining import run_job

        return run_job(self.context, payload)

    def status(self) -> dict:
        return {"workers": 1, "busy": 0}


#: Every operation in the spec (checked against /openapi.json below, so a new one is not missed).
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/v1/model"),
    ("POST", "/v1/predict"),
    ("GET", "/v1/explain/methods"),
    ("POST", "/v1/explain"),
]


@pytest.fixture(scope="module")
def api_schema(tiny_checkpoint_path: Path):
    from pneumolens.checkpoint import load_checkpoint

    app = create_app(
        ServeSettings(
            checkpoint=tiny_checkpoint_path,
            explain_prestart=False,
            max_upload_bytes=1_000_000,
            allowed_hosts=["testserver"],  # the Host header of the in-process client
        )
    )
    pool = InProcessPool(load_checkpoint(tiny_checkpoint_path).model)
    app.dependency_overrides[get_explain_pool] = lambda: pool
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_no_server_errors_and_responses_match_the_spec(api_schema, method, path):
    operation = api_schema[path][method]
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case) -> None:
        case.call_and_validate(
            checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
        )

    fuzz()
