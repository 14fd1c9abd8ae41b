"""Fuzz the whole API from its own `/openapi.json` (schemathesis) against a real corral.

The corral runs with a TLS listener, and the fuzzer goes through it with the token, so the
auth middleware is on the path too.  The property: no answer is a 5xx, and no request
hangs (every call has a timeout; a streaming answer is checked for its status and closed).
The one 5xx that is an answer, not a failure: ``GET /v1/health``'s 503, which says (with
its health body) that a service that should be up is not ready; a fuzzed load can leave
one that cannot start.
Examples are bounded and derandomised, so the run is the same on every CI run and takes
well under a minute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import Corral, python_cmd
from .test_remote import Remote, start_remote

# A test extra (pyproject's [test]); without it the module is skipped, not an error.
schemathesis = pytest.importorskip("schemathesis")
import requests  # noqa: E402 (installed with schemathesis)
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

#: The only operations left out: they end the supervisor under test (a restart would
#: also drop the listener mid-run); the supervisor's lifecycle has its own tests.
EXCLUDED = {"POST /v1/supervisor/restart", "POST /v1/supervisor/stop",
            "POST /v1/supervisor/upgrade"}
#: A known service name is given to these too, so that they reach past the 404; not to
#: `scale`, whose generated boundary (1,000 instances) would test the CI box, not the API.
NOT_WITH_KNOWN_NAME = {"POST /v1/services/{name}/scale"}
#: Per operation. `CORRAL_FUZZ_EXAMPLES=500` runs a longer, randomised hunt by hand.
EXAMPLES = int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "20"))
RANDOM = "CORRAL_FUZZ_EXAMPLES" in os.environ
CALL_TIMEOUT = 20.0
KNOWN = "fuzzed"


def call(remote: Remote, case: Any) -> None:
    """Send one generated request; fail on a 5xx or a hang."""
    follow = str((case.query or {}).get("follow", "")).lower() in ("true", "1", "yes", "on")
    kwargs = case.as_transport_kwargs(base_url=f"https://127.0.0.1:{remote.port}",
                                      headers={"Authorization": f"Bearer {remote.token()}"})
    # requests directly (not case.call, which reads the whole body): a stream is checked
    # for its status and closed, never read to its (absent) end.
    response = requests.request(**kwargs, verify=str(remote.tls / "ca.crt"),
                                timeout=CALL_TIMEOUT, stream=follow)
    try:
        health = (case.method.upper() == "GET" and case.formatted_path == "/v1/health"
                  and response.status_code == 503
                  and response.json().get("status") == "critical")
        assert response.status_code < 500 or health, (
            f"{case.method} {case.formatted_path} query={case.query} body={case.body!r} "
            f"-> {response.status_code}: {response.text[:500] if not follow else ''}")
    finally:
        response.close()


def fuzz(remote: Remote, operation: Any, **fixed: Any) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(**fixed))
    def run(case: Any) -> None:
        call(remote, case)
    run()


def test_api_answers_no_5xx_and_never_hangs(corral_factory: Any, tmp_path: Path) -> None:
    """1. Start corral with a TLS listener and one service.
    2. For every operation of /openapi.json (but those that end the supervisor), send
       generated requests, with random names and, where it applies, the known name.
    3. Every answer is below 500 and comes within the timeout; the supervisor is still up."""
    remote = start_remote(corral_factory())
    corral: Corral = remote.corral
    corral.ok("svc", "load", KNOWN, "--", *python_cmd("import time\nwhile True: time.sleep(1)"))
    schema = schemathesis.openapi.from_dict(requests.get(
        f"https://127.0.0.1:{remote.port}/openapi.json", timeout=CALL_TIMEOUT,
        headers={"Authorization": f"Bearer {remote.token()}"},
        verify=str(remote.tls / "ca.crt")).json())
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in EXCLUDED:
            continue
        seen.append(label)
        fuzz(remote, operation)
        if "{name}" in operation.path and label not in NOT_WITH_KNOWN_NAME:
            fuzz(remote, operation, path_parameters={"name": KNOWN})
    assert len(seen) >= 15 and "GET /v1/services" in seen
    assert remote.answers()
    assert "Traceback" not in corral.output.read_text()
