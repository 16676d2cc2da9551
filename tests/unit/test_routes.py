"""Manifest parsing (every form, every error names file/index/key) and the shared filtering rule."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.runtime.errors import ManifestError
from tools.runtime.routes import (
    MANIFEST_VERSION,
    Manifest,
    Route,
    decide_public_path,
    is_valid_cord_path,
    merge_routes,
    parse_manifest,
    read_manifest_file,
    sanitize_path,
    write_manifest,
)


@pytest.mark.parametrize(
    "path, method, expected",
    [
        ("/tts_to_audio/", "POST", "/tts_to_audio"),
        ("/Predict", "POST", "/predict"),
        ("/v1/models:predict", "POST", "/v1/models_predict"),
        ("/v1.0/run", "POST", "/v1_0/run"),
        ("/a-b/-c", "GET", "/a-b/_-c"),
        ("/v1/audio/transcriptions", "POST", "/v1/audio/transcriptions"),
    ],
)
def test_awkward_upstream_paths_get_a_valid_public_path(path, method, expected):
    decision = decide_public_path(path, method)
    assert decision.skip_reason is None
    assert decision.public_path == expected
    assert is_valid_cord_path(expected)


@pytest.mark.parametrize(
    "path, method, reason_part",
    [
        ("/v1/models/{model_id}", "GET", "{model_id}"),
        ("/", "GET", "root"),
        ("/favicon.ico", "GET", "file extension"),
        ("/static/app.css", "GET", "file extension"),
        ("/static/thing", "GET", "/static"),
        ("/gradio_api/info", "GET", "/gradio_api"),
        ("/__internal", "GET", "/__"),
        ("/docs", "GET", "/docs"),
        ("/health", "HEAD", "HEAD"),
        ("/health", "OPTIONS", "OPTIONS"),
    ],
)
def test_unservable_routes_are_skipped_with_a_reason(path, method, reason_part):
    decision = decide_public_path(path, method)
    assert decision.public_path is None
    assert reason_part in decision.skip_reason


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60).map(lambda s: "/" + s))
def test_every_accepted_public_path_is_valid_for_the_sdk(path):
    decision = decide_public_path(path, "POST")
    if decision.public_path is not None:
        assert is_valid_cord_path(decision.public_path)
    else:
        assert decision.skip_reason


def test_sanitize_keeps_valid_paths_unchanged():
    assert sanitize_path("/v1/chat/completions") == "/v1/chat/completions"


def test_seed_list_form_is_read():
    manifest = parse_manifest(
        [{"path": "/predict", "method": "POST", "port": 8080, "target_path": "/run", "stream": True}], "m.json"
    )
    route = manifest.routes[0]
    assert (route.path, route.method, route.port, route.upstream_path, route.stream) == (
        "/predict", "POST", 8080, "/run", True,
    )
    assert route.response_kind == "stream"


def test_later_keys_and_nested_cord_form_are_read():
    data = {
        "routes": [
            {"public_api_path": "/tts", "method": "post", "passthrough_path": "/tts_to_audio/", "passthrough_port": 8020,
             "function_name": "tts"},
            {"cord": {"public_api_path": "/asr", "public_api_method": "POST", "passthrough_path": "/inference",
                      "passthrough_port": 8080, "stream": False}},
            {"path": "/x", "public_api_path": "/y", "port": "8000"},
        ]
    }
    tts, asr, x = parse_manifest(data, "m.json").routes
    assert (tts.path, tts.method, tts.upstream_path, tts.port, tts.function_name) == (
        "/tts", "POST", "/tts_to_audio/", 8020, "tts",
    )
    assert (asr.path, asr.upstream_path, asr.port) == ("/asr", "/inference", 8080)
    assert (x.path, x.public_path, x.port, x.upstream_path) == ("/x", "/y", 8000, "/x")


def test_v2_kinds_are_read():
    data = {
        "version": 2,
        "routes": [
            {"path": "/inference", "method": "POST", "port": 8080,
             "request": {"kind": "multipart", "file_fields": ["file"]},
             "response": {"kind": "json", "content_type": "application/json"},
             "query_params": [{"name": "lang", "required": False}]},
        ],
        "skipped": [{"path": "/", "method": "GET", "reason": "root"}],
    }
    manifest = parse_manifest(data, "m.json")
    route = manifest.routes[0]
    assert route.request_kind == "multipart" and route.file_fields == ("file",)
    assert route.query_params == ("lang",)
    assert manifest.skipped[0]["reason"] == "root"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"routes": [{"path": "/a"}, {"method": "GET"}]}, "m.json: route 1: key 'path'"),
        ({"routes": [{"path": "/a", "port": "http"}]}, "m.json: route 0: key 'port'"),
        ({"routes": [{"path": "/a", "port": 70000}]}, "route 0: key 'port'"),
        ({"routes": [{"path": "/a", "port": True}]}, "key 'port'"),
        ({"routes": [{"path": "a"}]}, "must start with '/'"),
        ({"routes": [{"path": "/a", "method": "FETCH"}]}, "key 'method'"),
        ({"routes": [{"path": "/a", "stream": "yes"}]}, "key 'stream'"),
        ({"routes": [{"path": "/a", "request": {"kind": "xml"}}]}, "key 'request.kind'"),
        ({"routes": [{"path": "/a", "function_name": "not valid"}]}, "key 'function_name'"),
        ({"routes": [{"path": "/a", "cord": {"passthrough_port": "x"}}]}, "key 'cord.passthrough_port'"),
        ({"routes": "nope"}, "'routes' must be a list"),
        ({"paths": []}, "no 'routes' key"),
        ({"version": 99, "routes": []}, "version 99"),
        ("text", "expected a list of routes"),
        ([5], "route 0: expected an object"),
    ],
)
def test_bad_manifests_name_file_index_and_key(data, expected):
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, "m.json")
    assert expected in str(info.value)


def test_invalid_json_file_names_file_and_line(tmp_path):
    path = tmp_path / "deploy_x.routes.json"
    path.write_text('{"routes": [\n  {"path": "/a",}\n]}')
    with pytest.raises(ManifestError) as info:
        read_manifest_file(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest_file(tmp_path / "nope.json")


def test_merge_keeps_primary_and_reports_duplicates():
    primary = [Route("/a", "POST", 1), Route("/b", "GET", 1)]
    extra = [Route("/a", "POST", 1), Route("/a", "GET", 2), Route("/b", "GET", 2), Route("/b", "GET", None)]
    merged, dupes = merge_routes(primary, extra)
    assert [(r.path, r.method, r.port) for r in merged] == [
        ("/a", "POST", 1), ("/b", "GET", 1), ("/a", "GET", 2), ("/b", "GET", 2)
    ]
    assert dupes == [Route("/a", "POST", 1), Route("/b", "GET", None)]
    # a route on the default port (None) duplicates the same path+method on any port
    merged, dupes = merge_routes([Route("/h", "GET", None)], [Route("/h", "GET", 8080)])
    assert len(merged) == 1 and dupes == [Route("/h", "GET", 8080)]


def test_written_manifest_reads_back_identically(tmp_path):
    routes = [
        Route("/inference", "POST", 8080, "/inference", request_kind="multipart", file_fields=("file",)),
        Route("/tts_to_audio/", "POST", 8020, response_kind="binary", content_type="audio/wav", example={"text": "hi"}),
    ]
    path = tmp_path / "m.routes.json"
    write_manifest(Manifest(routes=routes, skipped=[{"path": "/", "reason": "root"}]), path)
    back = read_manifest_file(path)
    assert [r.to_json() for r in back.routes] == [r.to_json() for r in routes]
    assert json.loads(path.read_text())["version"] == MANIFEST_VERSION == 3
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("path, acts", [
    ("/flush_cache", True), ("/start_profile", True), ("/stop-profile", True), ("/flushCache", True),
    ("/SHUTDOWN", True), ("/v2/repository/models/{model_name}/unload", True), ("/sleep", True),
    ("/release_memory_occupation", True), ("/reset_prefix_cache", True), ("/v1/__flush__", True),
    ("/v1/__heartbeat__", False),
    ("/starter", False), ("/is_sleeping", False), ("/items/{stop}", False), ("/v1/chat/completions", False),
    ("/api/startup", False), ("/Stopwatch", False), ("/health", False),
])
def test_a_route_acts_on_the_service_when_a_segment_begins_with_an_action(path, acts):
    from tools.runtime.routes import acts_on_service

    assert acts_on_service(path) is acts
