"""Schemathesis against the real server's OpenAPI document: generated requests, valid and invalid, for every
operation; no 5xx, every status documented, every response body as documented. About a minute."""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from .servers import running_server

EXAMPLES_PER_OPERATION = 50  # per mode and operation: ~700 requests, under a minute
# A schema cannot say "a decodable image": schema-valid random bytes are rightly refused with 400.
NOT_EXPRESSIBLE = [positive_data_acceptance]


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    with running_server(model_dir, tmp_path_factory.mktemp("schema") / "server.log") as running:
        yield running


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_api_conforms_to_its_openapi_document(served, mode):
    schema = schemathesis.openapi.from_url(f"{served['base']}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/predict", "/saliency", "/filters/{layer}", "/model"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (operation.query or operation.path_parameters or operation.body):
            continue  # nothing a request to it could get wrong
        # No shrinking: the first failing request is reported as it was, and the run stays bounded.
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def conforms(case):
            case.call_and_validate(base_url=served["base"], timeout=30, excluded_checks=NOT_EXPRESSIBLE)

        try:
            conforms()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # free-form path strings: no request can get them wrong
