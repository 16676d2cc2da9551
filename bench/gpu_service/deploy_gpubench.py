"""bench/gpu's chute: model_service.py wrapped as deploy_example.py wraps its service, like any user's.

  GPUBENCH_PYTHON=/path/to/python-with-torch ./deploy.sh --run bench/gpu_service/deploy_gpubench.py

The routes come from discovery against the running service (deploy_gpubench.routes.json, written by
`python -m tools.discover_routes --base-url http://127.0.0.1:8031 -o deploy_gpubench.routes.json`).
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

USERNAME = resolve_username()
CHUTE_NAME = "gpubench"
CHUTE_TAG = "v0.1.0"
CHUTE_BASE_IMAGE = "chutes-wrappers-gpubench:latest"  # not built by the bench: it runs the service on the host
SERVICE_PORTS = parse_service_ports(os.environ.get("CHUTE_PORTS", "8031"))
CHUTE_ENV = {}
ENTRYPOINT = ["python3", "/app/model_service.py", "--host", "0.0.0.0", "--port", "8031"]
# The Python that has torch (bench/gpu makes one, or points at the machine's own).
HOST_COMMAND = [os.environ.get("GPUBENCH_PYTHON", sys.executable), "model_service.py",
                "--host", "127.0.0.1", "--port", str(SERVICE_PORTS[0])]
CHUTE_TAGLINE = "bench/gpu: a small transformer and vocoder"

if os.environ.get("GPUBENCH_SEAL_IN_LOOP"):  # bench/gpu's comparison: answers sealed as before issue 20
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import benchlib

    benchlib.seal_on_the_loop()

image = build_wrapper_image(USERNAME, CHUTE_NAME, CHUTE_TAG, CHUTE_BASE_IMAGE, env=CHUTE_ENV)

chute = Chute(
    username=USERNAME,
    name=CHUTE_NAME,
    tagline=CHUTE_TAGLINE,
    image=image,
    node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=16),
    concurrency=16,
)

add_health_cord(chute, SERVICE_PORTS)
register_passthrough_routes(chute, load_route_manifest(), SERVICE_PORTS[0])
attach_service(chute, ENTRYPOINT, SERVICE_PORTS, timeout=600)
