"""The registration plan without the SDK: routes and overrides in, cords and skipped routes out."""

from __future__ import annotations

import sys

import pytest

from tools.runtime.errors import ManifestError, WrapperError
from tools.runtime.registration import Plan, plan
from tools.runtime.routes import Route


def test_plan_needs_no_sdk():
    import subprocess

    code = ("import sys; from tools.runtime.registration import plan; from tools.runtime.routes import Route; "
            "p = plan([Route('/a')], 8020); assert [c.public_path for c in p.cords] == ['/a']; "
            "assert 'chutes' not in sys.modules, 'the plan imported the SDK'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cords_get_valid_public_paths_upstream_targets_and_ports():
    result = plan([Route("/tts_to_audio/", "POST"), Route("/v1/models", "GET", 9000, request_kind="none")], 8020)
    assert [(c.method, c.public_path, c.target.route.upstream_path, c.port) for c in result.cords] == [
        ("POST", "/tts_to_audio", "/tts_to_audio/", 8020),
        ("GET", "/v1/models", "/v1/models", 9000),
    ]
    assert [c.function_name for c in result.cords] == ["wrap_post_tts_to_audio", "wrap_get_v1_models"]
    assert [c.internal_path for c in result.cords] == ["/wrap_post_tts_to_audio", "/wrap_get_v1_models"]


def test_module_cords_and_taken_names_are_respected():
    result = plan([Route("/health", "GET"), Route("/a-b"), Route("/a_b")], 8020,
                  module_cords={("/health", "GET")}, used_names={"wrap_post_a_b"})
    assert [c.function_name for c in result.cords] == ["wrap_post_a_b_2", "wrap_post_a_b_3"]
    assert result.skipped == [(Route("/health", "GET"), "the module defines its own cord for GET /health")]


def test_same_path_on_a_second_port_gets_a_port_prefix_and_duplicates_are_skipped_with_reasons():
    result = plan([Route("/x", "GET", 1), Route("/x", "GET", 2), Route("/x", "GET", 1)], 8020)
    assert [c.public_path for c in result.cords] == ["/x", "/2/x"]
    assert "duplicate of GET /x on port 1" in result.skipped[0].reason


def test_catch_all_is_planned_last_with_every_template_and_path_parameters_are_skipped():
    result = plan([Route("/v1/models/{id}", "GET", request_kind="none"), Route("/echo")], 8020, catch_all="/proxy")
    assert [c.kind for c in result.cords] == ["proxy", "catch-all"]
    assert result.catch_all == ("/proxy", ["GET /v1/models/{id}", "POST /echo"])
    assert "reachable through /proxy" in result.skipped[0].reason
    assert result.registered == result.cords[:1]
    with pytest.raises(WrapperError, match="catch-all path"):
        plan([Route("/echo")], 8020, catch_all="/echo")


@pytest.mark.parametrize("path", ["/ping", "/Ping/", "/ping/"])
def test_ping_is_skipped_because_the_chutes_api_answers_it_itself(path):
    """chutes-api api/main.py:274-281: `/ping` on any chute's host never reaches the chute."""
    result = plan([Route(path, "GET", request_kind="none"), Route("/pong", "GET", request_kind="none")], 8020)
    assert [c.public_path for c in result.cords] == ["/pong"]
    assert "answered by the Chutes API itself" in result.skipped[0].reason
    with_catch_all = plan([Route(path, "GET", request_kind="none")], 8020, catch_all="/proxy")
    assert with_catch_all.catch_all == ("/proxy", [f"GET {path}"])
    assert with_catch_all.skipped[0].reason.endswith("reachable through /proxy")


def test_overrides_reach_the_target_and_bad_ones_name_the_key():
    result = plan([Route("/a")], 8020, overrides={"POST /a": {"timeout": 7, "file_fields": ["f"]}})
    assert result.cords[0].target.timeout == 7 and result.cords[0].target.file_fields == {"f": None}
    with pytest.raises(ManifestError, match=r"CHUTE_ROUTE_OVERRIDES\['POST /a'\]: unknown key"):
        plan([Route("/a")], 8020, overrides={"POST /a": {"timeot": 7}})


def test_an_example_override_is_the_routes_example_for_smoke_and_curl_lines():
    routes = [Route("/v2/models/{model_name}/ready", "GET", example={"_path": {"model_name": "string"}},
                    example_source="generated", path_params=("model_name",)), Route("/infer", "POST")]
    overrides = {"GET /v2/models/{model_name}/ready": {"example": {"_path": {"model_name": "slow"}}},
                 "POST /infer": {"example": {"inputs": []}}}
    result = plan(routes, 8080, overrides=overrides, catch_all="/proxy")
    (infer,) = result.registered
    assert (infer.route.example, infer.route.example_source) == ({"inputs": []}, "module")
    template = result.cords[-1].templates[0].route
    assert (template.example, template.example_source) == ({"_path": {"model_name": "slow"}}, "module")
    for bad, message in (({"example": [1]}, "key 'example' must be an object"),
                         ({"example": {"_path": "slow"}}, "'_path' must be an object"),
                         ({"examples": {}}, r"unknown key\(s\) examples")):
        with pytest.raises(ManifestError, match=message):
            plan(routes, 8080, overrides={"POST /infer": bad})


def test_summary_names_cords_catch_all_and_skips():
    text = plan([Route("/ok"), Route("/x/{y}", "GET")], 8020, catch_all="/proxy").summary()
    assert text.startswith("registered 1 route(s): POST /ok")
    assert "catch-all POST /proxy for 2 route template(s)" in text
    assert "skipped 1: GET /x/{y}" in text
    assert Plan().summary() == "registered 0 route(s)"


# --- CHUTE_UPSTREAM_HEADERS -----------------------------------------------------------------------


def test_upstream_headers_are_checked_and_resolved_from_the_environment_only():
    from tools.runtime.registration import check_upstream_headers, resolve_upstream_headers

    headers = check_upstream_headers({"Authorization": "Bearer ${SERVICE_KEY}", "Accept": "application/json"})
    assert resolve_upstream_headers(headers, {"SERVICE_KEY": "s3cret"}) == {
        "Authorization": "Bearer s3cret", "Accept": "application/json"}
    with pytest.raises(WrapperError, match="needs SERVICE_KEY, which is not set") as info:
        resolve_upstream_headers(headers, {})
    assert "s3cret" not in str(info.value)
    with pytest.raises(WrapperError, match="CR, LF or NUL"):
        resolve_upstream_headers(headers, {"SERVICE_KEY": "a\r\nX-Evil: 1"})


@pytest.mark.parametrize("headers, message", [
    ({"Bad Name": "x"}, "not a valid header name"),
    ({"Host": "x"}, "cannot be fixed"),
    ({"X-A": "a\nb"}, "without CR, LF or NUL"),
    ({"X-A": 5}, "must be a string"),
    (["X-A"], "expected a dict"),
])
def test_bad_upstream_headers_are_one_line_errors(headers, message):
    from tools.runtime.registration import check_upstream_headers

    with pytest.raises(ManifestError, match=message):
        check_upstream_headers(headers)


def test_a_literal_secret_in_a_header_is_a_warning(caplog_loguru):
    from tools.runtime.registration import check_upstream_headers

    check_upstream_headers({"X-API-Key": "literal-key"})
    assert any("looks secret" in line for line in caplog_loguru)
    assert not any("literal-key" in line for line in caplog_loguru)
