"""Proxy cords without a network: caller JSON -> upstream request, and the catch-all's path rules."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.runtime.errors import BadRequest
from tools.runtime.cords.catch_all import Template, check_proxy_path, match_template
from tools.runtime.cords.request import build_outgoing
from tools.runtime.routes import extension_for
from tools.runtime.registration import RouteOptions, Target
from tools.runtime.routes import Route
from tools.runtime.errors import ManifestError


def target(**route_fields) -> Target:
    route_fields.setdefault("path", "/r")
    return Target(Route(**route_fields), 8020)


def test_json_route_sends_body_and_moves_underscore_query_to_query_string():
    out = build_outgoing(target(query_params=("lang",)), {"text": "hi", "lang": "en", "_query": {"v": [1, 2]}}, [])
    assert out.json_body == {"text": "hi"} and out.has_json
    assert out.params == [("v", "1"), ("v", "2"), ("lang", "en")]


def test_route_without_body_sends_every_key_as_query_and_keeps_callers_query():
    out = build_outgoing(target(method="GET", request_kind="none"), {"limit": 5, "flag": True}, [("a", "1")])
    assert out.params == [("a", "1"), ("limit", "5"), ("flag", "true")]
    assert not out.has_json and out.data is None


def test_raw_route_sends_the_bytes_as_the_body_and_other_keys_as_query():
    raw = target(request_kind="raw", request_content_type="audio/wav")
    wav = b"RIFF\x00\x00WAVEfmt "
    out = build_outgoing(raw, {"body_base64": base64.b64encode(wav).decode(), "language": "de"}, [])
    assert (out.data, out.headers, out.params, out.has_json) == (wav, {"Content-Type": "audio/wav"}, [("language", "de")], False)
    # a data URL's type wins over the manifest's, `content_type` over both
    out = build_outgoing(raw, {"body": "data:audio/flac;base64," + base64.b64encode(b"fLaC").decode()}, [])
    assert (out.data, out.headers["Content-Type"]) == (b"fLaC", "audio/flac")
    out = build_outgoing(raw, {"body": "héllo", "content_type": "text/plain; charset=utf-8"}, [])
    assert (out.data, out.headers["Content-Type"]) == ("héllo".encode(), "text/plain; charset=utf-8")
    # no declared type: sniffed from the bytes
    out = build_outgoing(target(request_kind="raw"), {"body_base64": base64.b64encode(b"\x89PNG....").decode()}, [])
    assert out.headers["Content-Type"] == "image/png"
    for bad, fragment in (({"language": "de"}, "body_base64"), ({"body_base64": "%%%"}, "not valid base64"),
                          ({"body": 5}, "expected a string"), ({"body": "x", "content_type": 1}, "content_type")):
        with pytest.raises(BadRequest, match=fragment):
            build_outgoing(raw, bad, [])


def test_multipart_route_turns_base64_and_data_urls_into_file_parts():
    wav = b"RIFF\x00\x00\x00\x00WAVEfmt "
    out = build_outgoing(
        target(request_kind="multipart", file_fields=("file",)),
        {"file_base64": base64.b64encode(wav).decode(), "file_filename": "a.wav", "temperature": 0.5,
         "image": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode(), "meta": {"k": 1}},
        [],
    )
    assert isinstance(out.data, aiohttp.FormData)
    fields = {f[0]["name"]: (f[0].get("filename"), f[1].get("Content-Type"), f[2]) for f in out.data._fields}
    assert fields["file"] == ("a.wav", "audio/wav", wav)
    assert fields["temperature"][2] == "0.5" and fields["meta"][2] == '{"k": 1}'
    # a data URL in a field the manifest does not name as a file stays a form field
    assert fields["image"][0] is None


def test_declared_file_field_content_type_and_default_filename():
    t = Target(Route("/r", request_kind="multipart", file_fields=("audio",)), 8020, file_fields={"audio": "audio/flac"})
    out = build_outgoing(t, {"audio_base64": base64.b64encode(b"xx").decode()}, [])
    (options, headers, value), = out.data._fields
    assert options["filename"] == "audio.flac" and headers["Content-Type"] == "audio/flac" and value == b"xx"


def test_form_route_without_files_is_urlencoded():
    out = build_outgoing(target(request_kind="form"), {"a": "1", "b": 2}, [])
    assert out.data == {"a": "1", "b": "2"}


@pytest.mark.parametrize("payload", [{"file_base64": "%%%"}, {"file_base64": 5}, {"_query": [1]}])
def test_bad_caller_json_is_a_bad_request(payload):
    with pytest.raises(BadRequest):
        build_outgoing(target(request_kind="multipart", file_fields=("file",)), payload, [])


def test_non_object_json_body_passes_through_for_json_routes():
    out = build_outgoing(target(), [1, 2], [])
    assert out.json_body == [1, 2]
    with pytest.raises(BadRequest):
        build_outgoing(target(request_kind="multipart"), [1], [])


TEMPLATES = [
    Template.of(Target(Route("/v1/models/{model_id}", "GET", request_kind="none"), 8020)),
    Template.of(Target(Route("/tts_to_audio/", "POST"), 8020)),
]


@pytest.mark.parametrize(
    "method, path, expected",
    [
        ("GET", "/v1/models/demo-1", "GET /v1/models/{model_id}"),
        ("GET", "/v1/models/org:model.v2", "GET /v1/models/{model_id}"),
        ("POST", "/tts_to_audio/", "POST /tts_to_audio/"),
        ("GET", "/v1/models/a/b", None),
        ("POST", "/v1/models/demo-1", None),
        ("GET", "/v1/models/", None),
    ],
)
def test_templates_match_one_segment_per_parameter(method, path, expected):
    template, allowed = match_template(TEMPLATES, method, path)
    assert (template.label if template else None) == expected
    assert allowed == ["GET /v1/models/{model_id}", "POST /tts_to_audio/"]


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/v1/../x", "/v1/./x", "/v1/%2e%2e/x", "/a%2Fb", "http://evil/", "//evil/x", "/x@evil",
     "/x\r\nHost: y", "/x y", "/a\\b", "/x?y=1", "/x#f", "/" + "a" * 3000, "", None, 7, "/é"],
)
def test_catch_all_paths_outside_the_rules_are_refused(path):
    with pytest.raises(BadRequest):
        check_proxy_path(path)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_no_accepted_path_can_leave_the_service(path):
    try:
        checked = check_proxy_path("/" + path)
    except BadRequest:
        return
    assert checked.startswith("/") and not checked.startswith("//")
    assert not any(seg in (".", "..") for seg in checked.split("/"))
    assert not any(ch in checked for ch in "%@\\?#:" if ch != ":") and "://" not in checked
    assert all(0x20 < ord(ch) < 0x7F for ch in checked)


def test_route_options_are_validated():
    assert RouteOptions.parse("POST /a", {"file_fields": ["file"]}).file_fields == {"file": None}
    with pytest.raises(ManifestError, match="unknown key"):
        RouteOptions.parse("POST /a", {"timeot": 5})
    with pytest.raises(ManifestError, match="file_fields"):
        RouteOptions.parse("POST /a", {"file_fields": 3})


def test_extensions_for_common_answers():
    assert extension_for("audio/wav") == ".wav" and extension_for("image/png; q=1") == ".png"
    assert extension_for("application/x-unknown-thing") == ""


# --------------------------------------------------------------------------------------------------
# Request kinds as real services declare them (issue 12)


def test_post_without_declared_body_sends_undeclared_keys_as_json_and_query_params_as_query():
    route = target(method="POST", request_kind="undeclared", query_params=("stream_options",))
    out = build_outgoing(route, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                 "stream_options": "x", "file_base64": "QUJD"}, [])
    assert out.has_json and out.json_body == {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                              "file_base64": "QUJD"}
    assert out.params == [("stream_options", "x")]


def test_undeclared_on_get_is_all_query_and_old_none_on_post_reads_as_undeclared():
    out = build_outgoing(target(method="GET", request_kind="undeclared"), {"q": "x"}, [])
    assert (out.params, out.has_json) == ([("q", "x")], False)
    from tools.runtime.routes import parse_manifest

    old = parse_manifest({"version": 2, "routes": [{"path": "/a", "method": "POST", "request": {"kind": "none"}},
                                                   {"path": "/b", "method": "GET", "request": {"kind": "none"}}]}, "m")
    assert [r.request_kind for r in old.routes] == ["undeclared", "none"]
    new = parse_manifest({"version": 3, "routes": [{"path": "/a", "method": "POST", "request": {"kind": "none"}}]}, "m")
    assert new.routes[0].request_kind == "none"  # said on purpose in a v3 manifest: every key to the query
    out = build_outgoing(Target(new.routes[0], 1), {"k": 1}, [])
    assert (out.params, out.has_json) == ([("k", "1")], False)


def test_an_empty_object_is_a_body_and_no_body_is_none():
    for kind in ("json", "undeclared"):
        out = build_outgoing(target(method="POST", request_kind=kind), {}, [])
        assert out.has_json and out.json_body == {}, kind
    out = build_outgoing(target(method="POST", request_kind="undeclared"), None, [])
    assert not out.has_json and out.data is None
    # GET routes send a body only when there is something in it
    out = build_outgoing(target(method="GET", request_kind="json"), {}, [])
    assert not out.has_json


@pytest.mark.parametrize("kind,fields", [("json", ()), ("multipart", ("file",)), ("form", ()), ("raw", ())])
def test_a_missing_caller_body_on_a_route_that_takes_one_is_a_bad_request(kind, fields):
    with pytest.raises(BadRequest, match=r"POST /r takes a .*body.*the call had none"):
        build_outgoing(target(method="POST", request_kind=kind, file_fields=fields), None, [])
    # GET with no body is a plain call
    build_outgoing(target(method="GET", request_kind=kind if kind != "raw" else "none"), None, [])


@pytest.mark.parametrize("kind", ["json", "none", "undeclared"])
def test_override_file_fields_make_any_bodyish_route_multipart(kind):
    route = Route("/inference", "POST", request_kind=kind)
    wav = b"RIFF\x00\x00\x00\x00WAVEfmt "
    out = build_outgoing(Target(route, 1, file_fields={"file": "audio/wav"}),
                         {"file": base64.b64encode(wav).decode(), "language": "en"}, [])
    assert isinstance(out.data, aiohttp.FormData) and not out.has_json and out.params == []
    parts = {f[0]["name"]: (f[0].get("filename"), f[1].get("Content-Type"), f[2]) for f in out.data._fields}
    assert parts["file"] == ("file.wav", "audio/wav", wav)
    assert parts["language"][2] == "en"
