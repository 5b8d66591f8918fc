"""schemathesis against both OpenAPI schemas (``/api/v1/openapi.json`` and the compatible
routes' ``/openapi.json``), in process through Django's WSGI handler, with a valid token and a
session that has exposures, on SQLite and PostgreSQL: whatever the generated request, never a
server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from emlive.acquisition import Acquisition

pytestmark = pytest.mark.slow  # about 20 s per schema and database

ACQ = Acquisition(pixel_size_a=0.83, dose_per_frame_e_a2=1.0, voltage_kv=300.0)
MAX_EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 15}
"""Per operation and mode: both schemas run in about 20 s per database on 2 vCPUs."""


@pytest.fixture
def served(web_any, store, make_results):
    """A facility with one started session holding processed and failed exposures, on SQLite
    and on PostgreSQL (which refuses some text SQLite stores)."""
    web = web_any
    from django.core.wsgi import get_wsgi_application

    from emlive.web import control

    web.session(movies=("a.tif", "b.tif", "c.tif"))
    session = control.start_processing(web.root, "p1", "ann", "grid1", ACQ)
    for i, name in enumerate(("a.tif", "b.tif", "c.tif")):
        exposure, _ = store.record_exposure(session, name, 1, 1)
        store.mark_submitted(exposure.pk)
        if i < 2:
            store.store_result(
                exposure.pk, *make_results(name), motion_engine="native", motion_engine_version="t",
                ctf_engine="native", ctf_engine_version="t",
            )  # fmt: skip
        else:
            store.mark_failed(exposure.pk, "boom")
    return web, get_wsgi_application()


def check_every_operation(app, schema_path: str, token: str) -> int:
    """Run generated requests, valid ones and invalid ones, against every operation of the
    schema at ``schema_path``; returns how many operations were exercised. (schemathesis's lazy pytest loader,
    ``from_fixture``, does not run under pytest 9, so Hypothesis drives each operation here.)"""
    schema = schemathesis.openapi.from_wsgi(schema_path, app)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode, examples in MAX_EXAMPLES.items():

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            def run(case) -> None:
                case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error])

            run()
    return len(operations)


def test_api_v1_never_answers_a_server_error(served):
    web, app = served
    assert check_every_operation(app, "/api/v1/openapi.json", web.tokens["staff"]) == 20


def test_compatible_routes_never_answer_a_server_error(served):
    web, app = served
    assert check_every_operation(app, "/openapi.json", web.tokens["staff"]) == 8
