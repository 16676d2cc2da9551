"""Template deploy module: copy it to deploy_<name>.py and edit the variables below.

With no edits it wraps the bundled demo service (tools/demo_service.py):
  ./deploy.sh --run deploy_example            # the service and the chute on this machine, called as on Chutes
  ./deploy.sh --build deploy_example --local   # a wrapper image (needs the demo base image, see README)

This file is imported by the `chutes` CLI, by deploy.sh and by the wrapped container; it must import
without a container engine, a GPU, network access or a Chutes account.
"""

import os
import sys

from chutes.chute import Chute, NodeSelector

from tools.chute_wrappers import (
    add_health_cord,
    attach_service,
    build_wrapper_image,
    load_route_manifest,
    parse_service_ports,
    register_passthrough_routes,
    resolve_username,
)

# Who owns the chute: CHUTES_USERNAME, else ~/.chutes/config.ini, else a placeholder (fine locally).
USERNAME = resolve_username()

# Name and version of the chute and its image (lowercase letters, digits, '-', '_', '.').
CHUTE_NAME = "demo-service"
CHUTE_TAG = "v0.1.0"

# The Docker image that holds your service; it is wrapped, not rebuilt. The demo's base image is
# built from tools/demo-service.Dockerfile (see README, "Containers").
CHUTE_BASE_IMAGE = "chutes-wrappers-demo:latest"

# Ports your service listens on; the chute waits for all of them at startup. Routes without a port
# go to the first. (Here CHUTE_PORTS may override the demo's 8020, e.g. when 8020 is taken locally.)
SERVICE_PORTS = parse_service_ports(os.environ.get("CHUTE_PORTS", "8020"))

# Per port, the path that answers 2xx once the service can take calls: the chute serves nothing
# before that (a model server opens its port long before its model is loaded, and a call sent then
# fails the instance on Chutes). Ports left out take what discovery found (the manifest's
# "ready_paths"); None: the open port is enough. /health cord reports readiness and liveness apart.
SERVICE_READY_PATHS = {SERVICE_PORTS[0]: "/health"}

# Environment for the service: baked into the image, and passed to the container during discovery.
# For `./deploy.sh --run` HOST_COMMAND gets it too, with 0.0.0.0 as 127.0.0.1 (loopback only locally).
CHUTE_ENV = {
    "DEMO_GREETING": "hello from the demo service",
}

# The command that starts the service inside the image (the base image's ENTRYPOINT + CMD, which
# Chutes replaces). A list, or a string split like a shell would. None: the chute starts nothing and
# only waits for SERVICE_PORTS.
ENTRYPOINT = ["python3", "/srv/demo/demo_service.py", "--host", "0.0.0.0", "--port", "8020"]

# The command that starts the same service on this machine for `./deploy.sh --run` (host dev mode),
# run from this file's directory. None: start the service yourself before `--run`.
HOST_COMMAND = [sys.executable, "tools/demo_service.py", "--host", "127.0.0.1", "--port", str(SERVICE_PORTS[0])]

# Routes served even when discovery finds none (services without OpenAPI). Merged with the
# discovered manifest (deploy_example.routes.json); a discovered route with the same path+method wins.
CHUTE_STATIC_ROUTES = [
    {"path": "/v1/echo", "method": "POST", "target_path": "/v1/echo"},
]

# Per-route overrides, keyed "METHOD /path" as in the manifest: name file fields and their content
# type, set a timeout in seconds. Usually not needed.
CHUTE_ROUTE_OVERRIDES = {
    "POST /inference": {"file_fields": {"file": "audio/wav"}, "timeout": 300},
}

# Headers added to every request to the service (an API key, an Accept header). `${NAME}` in a value is
# read from the chute's environment when it starts: on Chutes a secret of the chute, locally your
# shell's. Never write a secret itself here: this file goes into the image. Usually not needed.
CHUTE_UPSTREAM_HEADERS = {}

# Short description shown in chute listings.
CHUTE_TAGLINE = "chutes-wrappers demo: TTS-like, STT-like and JSON routes"

image = build_wrapper_image(USERNAME, CHUTE_NAME, CHUTE_TAG, CHUTE_BASE_IMAGE, env=CHUTE_ENV)

chute = Chute(
    username=USERNAME,
    name=CHUTE_NAME,
    tagline=CHUTE_TAGLINE,
    image=image,
    node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=16),
    concurrency=4,
)

# GET /health on the chute reports each service port: live (it accepts connections) and ready.
add_health_cord(chute, SERVICE_PORTS, ready_paths=SERVICE_READY_PATHS)

# One cord per route of the manifest and CHUTE_STATIC_ROUTES (it carries JSON, uploads, binary and
# text answers, query strings and streams); POST /proxy reaches routes with path parameters.
# Skipped routes are logged with the reason (./deploy.sh --validate lists them).
register_passthrough_routes(
    chute,
    load_route_manifest(static_routes=CHUTE_STATIC_ROUTES),
    SERVICE_PORTS[0],
    overrides=CHUTE_ROUTE_OVERRIDES,
    catch_all="/proxy",
    upstream_headers=CHUTE_UPSTREAM_HEADERS,
)

# Start ENTRYPOINT when the chute starts, wait until SERVICE_PORTS are ready, stop it when the chute stops.
attach_service(chute, ENTRYPOINT, SERVICE_PORTS, timeout=600, ready_paths=SERVICE_READY_PATHS)
