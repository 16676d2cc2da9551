"""What discovery asks the running service beyond its spec (tools/discovery/answers.py): the readiness
path and the real media type of GET routes said to answer JSON. The answers are given as a table here;
tests/integration and the real-services tier ask real servers."""

from __future__ import annotations

from tools.discovery.answers import READY_CANDIDATES, ready_path, real_kinds
from tools.runtime.routes import Route

BASE = "http://127.0.0.1:9"


def answering(table: dict[str, tuple[int, str]]):
    def head(url: str, timeout: float) -> tuple[int, str]:
        path = url.removeprefix(BASE)
        if path not in table:
            raise ConnectionResetError("no such path here")
        return table[path]
    return head


def get(path: str, **kwargs) -> Route:
    return Route(path, "GET", port=9, target_path=path, source="openapi", **kwargs)


def test_the_first_candidate_answering_2xx_wins():
    head = answering({"/health": (200, "application/json"), "/readyz": (200, "text/plain"), "/v1/models": (200, "")})
    assert ready_path(BASE, [], head=head) == "/readyz"
    assert READY_CANDIDATES.index("/readyz") < READY_CANDIDATES.index("/health")


def test_a_declared_path_still_loading_is_chosen_but_auth_or_missing_never():
    # MLServer while its model loads: /v2/health/ready answers 400, /v2/health/live 200 (not a candidate)
    loading = answering({"/v2/health/ready": (400, ""), "/v1/models": (401, "application/json")})
    assert ready_path(BASE, [get("/v2/health/ready"), get("/v1/models")], head=loading) == "/v2/health/ready"
    assert ready_path(BASE, [], head=loading) is None  # not declared and not 2xx: not trusted
    assert ready_path(BASE, [get("/v1/models")], head=loading) is None  # 401: needs a key the chute lacks


def test_a_gradio_app_is_ready_when_its_config_answers():
    assert ready_path(BASE, [], gradio=True, head=answering({})) == "/config"


def test_get_routes_said_json_get_the_kind_they_really_answer():
    routes = [get("/metrics"), get("/docs-page"), get("/data"), get("/items/{id}", path_params=("id",)),
              Route("/run", "POST", port=9, source="openapi"), get("/fails")]
    head = answering({"/metrics": (200, "text/plain; version=0.0.4"), "/docs-page": (200, "text/html; charset=utf-8"),
                      "/data": (200, "application/json"), "/items/{id}": (200, "text/plain"),
                      "/run": (200, "text/plain"), "/fails": (500, "text/html")})
    kinds = {(r.method, r.path): (r.response_kind, r.content_type) for r in real_kinds(BASE, routes, head=head)}
    assert kinds == {("GET", "/metrics"): ("text", "text/plain"), ("GET", "/docs-page"): ("text", "text/html"),
                     ("GET", "/data"): ("json", None), ("GET", "/items/{id}"): ("json", None),
                     ("POST", "/run"): ("json", None), ("GET", "/fails"): ("json", None)}


def test_routes_that_act_on_the_service_are_never_asked():
    """SGLang answers GET /flush_cache and /start_profile: asking them would empty its cache and start
    its profiler (routes.acts_on_service)."""
    asked = []

    def head(url: str, timeout: float) -> tuple[int, str]:
        asked.append(url.removeprefix(BASE))
        return 200, "text/plain"

    routes = [get("/flush_cache"), get("/start_profile"), get("/stopProfile"), get("/metrics"), get("/starter")]
    kinds = {r.path: r.response_kind for r in real_kinds(BASE, routes, head=head)}
    assert sorted(asked) == ["/metrics", "/starter"]
    assert kinds == {"/flush_cache": "json", "/start_profile": "json", "/stopProfile": "json", "/metrics": "text",
                     "/starter": "text"}
