"""Kinto (Mozilla, PyPI): a JSON storage HTTP API on Pyramid whose routes are mostly path parameters
(/v1/buckets/{bucket_id}/collections/{collection_id}/records/{id}) and whose Swagger 2.0 spec sits
at /v1/__api__, a place no one probes by default. Discovered, wrapped, smoke-tested, compared."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.realservices.conftest import HERE, assert_same_answer, discover, write_module
from tools.runtime.routes import read_manifest_file
from tools import deploy_module
from tools.cord_table import cords_of
from tools.commands.smoke import Limits, calls_for, run_calls, summary_line, table

pytestmark = pytest.mark.realservices

# A JSON route made a proxy cord on purpose, to see how a missing caller body is answered.
OVERRIDES = {"POST /v1/buckets": {"mode": "proxy"}}


@pytest.fixture(scope="module")
def kinto(realsvc_python, start_service, tmp_path_factory):
    work = tmp_path_factory.mktemp("kinto")
    shutil.copy(HERE / "kinto.ini", work / "kinto.ini")
    # a Kinto deployment carries its version file (Dockerflow's /__version__ reads it), else that route is a 500
    (work / "version.json").write_text('{"source": "https://github.com/Kinto/kinto", "version": "26.5.0", '
                                       '"commit": "unknown", "build": "tests/realservices"}')
    return start_service("kinto", [str(realsvc_python.parent / "kinto"), "start", "--ini", "kinto.ini", "--port", "{port}"],
                         cwd=work, ready_path="/v1/__heartbeat__")


@pytest.fixture(scope="module")
def discovered(kinto, tmp_path_factory):
    directory = tmp_path_factory.mktemp("kinto-module")
    without = discover(kinto, directory / "deploy_kinto.routes.json", "--no-spec-grace", "0.5")
    with_path = discover(kinto, directory / "deploy_kinto.routes.json", "--probe-path", "/v1/__api__")
    return directory, without, with_path


@pytest.fixture(scope="module")
def wrapped(kinto, discovered, chute_runner):
    directory, _, proc = discovered
    assert proc.returncode == 0, proc.stderr
    module = write_module(directory, "kinto", kinto.port, overrides=OVERRIDES)
    return module, chute_runner(module)


def test_a_spec_nobody_probes_is_found_with_probe_path_which_the_error_names(discovered):
    directory, without, with_path = discovered
    assert without.returncode == 1
    last = without.stderr.strip().splitlines()[-1]
    assert "no OpenAPI spec on any port" in last and "--probe-path" in last
    assert with_path.returncode == 0 and "spec at /v1/__api__" in with_path.stderr
    routes = {(r.method, r.path): r for r in read_manifest_file(directory / "deploy_kinto.routes.json").routes}
    record = routes[("PUT", "/v1/buckets/{bucket_id}/collections/{collection_id}/records/{id}")]
    assert record.path_params == ("bucket_id", "collection_id", "id") and record.request_kind == "json"
    assert routes[("GET", "/v1/buckets")].query_params[:2] == ("_limit", "_sort")


def test_smoke_reaches_every_route_template(wrapped):
    module, runner = wrapped
    loaded = deploy_module.load(module, keep=False)
    calls = calls_for(runner.base_url, cords_of(loaded.chute), loaded.get("CHUTE_ROUTE_OVERRIDES"))
    results = asyncio.run(run_calls(calls, Limits(call_timeout=20)))
    print(table(results))
    print(summary_line(results))
    by_label = {(r.call.method, r.call.label): r for r in results}
    # kinto's POST /__flush__ empties its database: it runs last and alone (routes.acts_on_service), or
    # it raced the PUT below and the GET of the same bucket found nothing
    assert [c.phase for c in calls if c.label == "/v1/__flush__"] == [max(c.phase for c in calls)]
    assert sum(1 for call in calls if call.kind == "catch-all") >= 25
    # what creates runs first: the bucket PUT makes (a made-up id, `1`) is there for the GET that reads it
    for label in (("GET", "/v1"), ("GET", "/v1/buckets"), ("POST", "/v1/buckets"), ("GET", "/v1/__heartbeat__"),
                  ("POST", "PUT /v1/buckets/{id}"), ("POST", "GET /v1/buckets/{id}"), ("GET", "/v1/__version__")):
        assert by_label[label].outcome == "ok", (label, by_label[label].status, by_label[label].problem)
    assert [r.call.key for r in results if r.outcome in ("failed", "timeout")] == [], summary_line(results)
    assert all(r.call.made_up for r in results if r.outcome == "untried")


def stored(body: dict) -> dict:
    """A Kinto object without what the server makes up (ids, timestamps)."""
    if "data" in body and isinstance(body["data"], dict):
        return {**body, "data": {k: v for k, v in body["data"].items() if k not in ("id", "last_modified")}}
    if "data" in body and isinstance(body["data"], list):
        return {**body, "data": [{k: v for k, v in item.items() if k not in ("id", "last_modified")} for item in body["data"]]}
    return body


def test_hello_page(kinto, wrapped):
    runner = wrapped[1]
    assert_same_answer(kinto.call("GET", "/v1/"), runner.cord("GET", "/v1"))


def test_create_read_and_list_through_path_parameters(kinto, wrapped):
    runner = wrapped[1]
    direct_b, chute_b = f"/v1/buckets/direct-{runner.name}-b", f"/v1/buckets/chute-{runner.name}-b"
    for bucket, call in ((direct_b, kinto.call), (chute_b, lambda m, p, b=None, q=None: runner.templated(m, p, b, q))):
        # Kinto says 201 Created; through the gateway every success is 200 (its {"json": ...} answers)
        created = call("PUT", bucket, {"data": {"title": "shelf"}})
        assert created.status_code in (200, 201) and created.json()["data"]["title"] == "shelf", \
            (bucket, created.status_code, created.text[:300])
        assert call("PUT", f"{bucket}/collections/books", {"data": {}}).ok
        for title in ("b", "a"):
            assert call("POST", f"{bucket}/collections/books/records", {"data": {"title": title}}).ok
    assert_same_answer(kinto.call("GET", direct_b), runner.templated("GET", chute_b), stored)
    query = {"_sort": "title", "_limit": "1"}
    direct = kinto.call("GET", f"{direct_b}/collections/books/records", query=query)
    through = runner.templated("GET", f"{chute_b}/collections/books/records", query=query)
    assert_same_answer(direct, through, stored)
    assert [item["title"] for item in through.json()["data"]] == ["a"]


def test_an_empty_object_patches_nothing_and_is_still_a_body(kinto, wrapped):
    runner = wrapped[1]
    direct_p, chute_p = f"/v1/buckets/direct-{runner.name}-p", f"/v1/buckets/chute-{runner.name}-p"
    for bucket in (direct_p, chute_p):
        assert kinto.call("PUT", bucket, {"data": {"title": "t"}}).status_code == 201
    direct = kinto.call("PATCH", direct_p, {})
    through = runner.templated("PATCH", chute_p, {})
    assert_same_answer(direct, through, stored)


def test_listing_with_query_parameters_on_a_plain_cord(kinto, wrapped):
    runner = wrapped[1]
    ids = lambda body: sorted(item["id"] for item in body["data"])  # noqa: E731
    assert_same_answer(kinto.call("GET", "/v1/buckets", query={"_limit": "50"}),
                       runner.cord("GET", "/v1/buckets", query={"_limit": "50"}), ids)
    assert_same_answer(kinto.call("GET", "/v1/buckets", query={"_limit": "50"}),
                       runner.cord("GET", "/v1/buckets", {"_limit": 50}), ids)


def test_errors_of_the_service_keep_its_body(kinto, wrapped):
    runner = wrapped[1]
    direct = kinto.call("GET", "/v1/buckets/none-such")
    through = runner.templated("GET", "/v1/buckets/none-such")
    assert direct.status_code in (403, 404)
    assert_same_answer(direct, through)
    body = {"data": {"title": 5}, "permissions": {"write": "not-a-list"}}  # kinto validates: 400
    direct = kinto.call("PUT", "/v1/buckets/direct-bad", body)
    through = runner.templated("PUT", "/v1/buckets/chute-bad", body)
    assert direct.status_code == 400
    assert_same_answer(direct, through, lambda error: {k: v for k, v in error.items() if k != "details"})


def test_batch_on_an_sdk_passthrough_cord(kinto, wrapped):
    runner = wrapped[1]
    body = {"requests": [{"method": "GET", "path": f"/buckets/direct-{runner.name}-b"},
                         {"method": "GET", "path": "/buckets/none"}]}
    statuses = lambda answer: [item["status"] for item in answer["responses"]]  # noqa: E731
    assert_same_answer(kinto.call("POST", "/v1/batch", body), runner.cord("POST", "/v1/batch", body), statuses)


def test_a_json_route_called_without_a_body_is_a_clear_400(wrapped):
    """Through the gateway the platform itself refuses it (400, "invalid request JSON payload").
    Fails in dev mode until the chute answers a POST without a body itself: the SDK's DevMiddleware
    calls request.json() first and answers a bare 500 (the proxy cord would say 400)."""
    runner = wrapped[1]
    through = runner.cord("POST", "/v1/buckets")
    assert through.status_code == 400, (through.status_code, through.text[:300])
    assert "JSON" in through.json()["detail"]


def test_the_chutes_api_document_is_valid_openapi_with_every_cord(wrapped):
    """The chute's API document (as the local gateway serves it), read by a real validator."""
    from tests.realservices.conftest import chute_document

    module, runner = wrapped[-2], wrapped[-1]
    document = chute_document(module, runner)
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert ("POST", "/proxy") in operations and ("GET", "/health") in operations and len(operations) > 5
