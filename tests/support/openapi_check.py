"""An OpenAPI 3.1 document checked as a validator and a client generator would read it: the real
validator (openapi-spec-validator), plus what it lets through (measured: a `$ref` to nowhere inside a
request body, a security requirement naming no scheme, an example that breaks its own schema)."""

from __future__ import annotations

from typing import Any, Iterator

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict, ref: str) -> Any:
    assert ref.startswith("#/"), f"only local $refs: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"$ref to nowhere: {ref}"
        node = node[part]
    return node


def check_document(document: dict) -> None:
    """Raise AssertionError (or the validator's error) for anything a generator would trip on."""
    assert document["openapi"].startswith("3.1."), document["openapi"]
    validate(document)
    for ref in refs(document):
        resolve(document, ref)
    schemes = set(document.get("components", {}).get("securitySchemes", {}))
    requirements = list(document.get("security", []))
    ids = []
    for item in document["paths"].values():
        for operation in item.values():
            requirements += operation.get("security", [])
            ids.append(operation.get("operationId"))
            body = operation.get("requestBody", {}).get("content", {})
            for media in body.values():
                schema = media.get("schema", {})
                for example in schema.get("examples", []):
                    OAS31Validator(schema).validate(example)
    for requirement in requirements:
        assert set(requirement) <= schemes, f"security names no scheme: {requirement}"
    assert None not in ids and len(ids) == len(set(ids)), f"operationIds missing or repeated: {ids}"
