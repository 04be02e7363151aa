"""The service's OpenAPI document is a contract: schemathesis generates requests from /openapi.json for every route
(admin routes with the token) against the real app on loopback, with a real registry (a version promoted) and a
real log store, and checks each answer: no 5xx, status, content type, headers and body as the document declares,
invalid data refused. Its command line runs every phase (examples, coverage of each constraint's edges, fuzzing);
the generated cases are also sent one by one here, to check that a refused request changes nothing in the log store.

Not checked: `positive_data_acceptance` (a schema-valid body is accepted). Some refusals are about meaning, not
shape (duplicate candidate ids, feedback with nothing in it), which JSON Schema cannot state; the document declares
them as 422 Problems, and the status check holds them to that."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from drn import lifecycle
from drn.bundle import bundle_of
from drn.logstore import LogStore
from drn.registry import Registry
from test_serving import ADMIN, CLOCK, _settings, serve

pytestmark = pytest.mark.integration

EXAMPLES = 60  # generated requests per route and mode (schema-valid and invalid): about 800 in all


@pytest.fixture(scope="module")
def service(tmp_path_factory, store_urls, request):
    """The app on loopback serving a promoted version; (base url, log store)."""
    from drn.model import build_network
    from test_serving import TINY
    home = tmp_path_factory.mktemp("contract")
    registry = Registry(store_urls.mlflow(request, home), artifact_root=str(home / "mlartifacts"))
    version = registry.register(bundle_of(build_network(TINY, seed=1)), kind="offline", parent=None,
                                data_window=None, params={}, metrics={})
    with LogStore(store_urls.logstore(request, home)) as logs:
        lifecycle.promote(registry, logs, version, who="test", why="contract", now=time.time())
        with serve(_settings(home), registry, logs) as client:
            yield str(client.base_url), logs


def test_schemathesis_finds_no_failure_on_any_route(service, tmp_path):
    url, _ = service
    run = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "--max-examples",
         str(EXAMPLES), "--seed", "1", "--no-color", "-H", f"Authorization: Bearer {ADMIN}", "-H",
         f"X-DRN-Clock-Token: {CLOCK}", "--exclude-checks", "positive_data_acceptance"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = run.stdout[run.stdout.find("SUMMARY"):]
    print(summary)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "Tested: 7" in summary


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_answers_as_its_openapi_document_says(service, mode):
    url, logs = service
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/recommend", "/feedback", "/model", "/healthz", "/metrics",
                                              "/admin/reload", "/admin/rollback"}
    if mode == GenerationMode.NEGATIVE:  # a route without a body or parameters has no invalid form
        operations = [op for op in operations if len(op.body) > 0]
    tried: dict[str, int] = {}
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case) -> None:
            before = logs.counts()
            response = case.call(headers={"Authorization": f"Bearer {ADMIN}", "X-DRN-Clock-Token": CLOCK})
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            if response.status_code >= 400:
                assert logs.counts() == before, f"a refused {case.method} {case.path} changed the log store"
            tried[operation.label] = tried.get(operation.label, 0) + 1
        answers_as_documented()
    print(f"\n{mode.value}: requests per route {tried}")
    assert len(tried) == len(operations)
