"""`deploy.sh --openapi MODULE`: write the chute's public API as an OpenAPI 3.1 document, as callers on
Chutes call it (tools/platform/openapi_doc.py), without starting anything. `--run` serves the same
document at /openapi.json, with a docs page at /docs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tools import deploy_module
from tools.platform.openapi_doc import build_document, document_paths
from tools.runtime.errors import WrapperError, run_cli


def default_output(module_path: Path) -> Path:
    """deploy_x.openapi.json beside deploy_x.py."""
    return module_path.with_name(module_path.stem + ".openapi.json")


def write_document(module_arg: str, output: str | None) -> int:
    module = deploy_module.load(module_arg)
    document = build_document(module.chute)
    text = json.dumps(document, indent=2) + "\n"
    if output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(output) if output else default_output(module.path)
    if path.is_dir():
        raise WrapperError(f"--output {path} is a folder", "give a file name, e.g. --output api.json")
    temporary = None
    try:
        # written whole or not at all: a temporary file in the same folder, renamed into place
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
            temporary = out.name
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise WrapperError(f"cannot write {path}: {exc.strerror or exc}") from None
    operations = sum(1 for _ in document_paths(document))
    print(f"wrote {path}: OpenAPI {document['openapi']}, {operations} operation(s), server {document['servers'][-1]['url']}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --openapi", description=__doc__.splitlines()[0])
    parser.add_argument("module", help="deploy module, e.g. deploy_example (or a path to one)")
    parser.add_argument("--output", default=None,
                        help="the file to write ('-': standard output); else MODULE.openapi.json beside the module")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    run_cli(lambda: write_document(args.module, args.output), debug=args.debug, prog="deploy.sh --openapi")


if __name__ == "__main__":
    main()
