"""A Python process that has imported the libraries a node and a gateway spend their start on (the
chutes SDK, its servers, starlette, aiohttp), then waits to be told what to run: `--run --reload`
keeps one ready for each of the next chute's processes, so a restart costs importing the module and
tools/, not the SDK (tools/platform/reload.py).

    python -m tools.platform.standby CONTROL_FD

It reads one line from CONTROL_FD, the JSON argv of what to run (`["-m", "tools.runtime.sdk.node", ...]`),
forgets every module of tools/ it has (so what runs is what is on disk now) and runs it as `python -m`
would. End of input without a line: it exits. Only third-party libraries are imported beforehand:
none of them changes while you edit your chute.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys

# What `chutes.entrypoint.run` (the node) and a gateway import anyway, heaviest first.
WARM = ("chutes.entrypoint.run", "chutes.chute", "hypercorn.asyncio", "uvicorn", "starlette.applications",
        "aiohttp", "orjson", "prometheus_client", "cryptography.hazmat.primitives.ciphers.aead")


def main(argv: list[str]) -> None:
    control = int(argv[0])
    for name in WARM:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - what fails here fails again, with its message, in what runs
            pass
    with os.fdopen(control, "r") as pipe:
        line = pipe.readline()
    if not line:
        return
    command = json.loads(line)
    if command[:1] != ["-m"] or len(command) < 2:
        raise SystemExit(f"standby: expected [\"-m\", MODULE, ...], got {command!r}")
    for name in [name for name in sys.modules if name == "tools" or name.startswith("tools.")]:
        del sys.modules[name]
    sys.argv = [command[1], *command[2:]]
    runpy.run_module(command[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
