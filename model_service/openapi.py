"""The service's OpenAPI 3.1 document and a dependency-free HTML page rendering it.

The request schemas state what model_service/model.py enforces, from its constants (tensor count, shape,
batch rows, FP32 range, age range, classes); what JSON Schema cannot say (`data` holds N*3 numbers) is in
the descriptions. tests/proxy/test_openapi_truth.py checks the document and fuzzes the service against it.
"""

from __future__ import annotations

import html
from typing import Any

from model_service.model import AGE_MAX, AGE_MIN, BLANKS, FP32_MAX, MAX_BATCH_ROWS, N_FEATURES, PCLASSES, SEX_CODES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _bad_request() -> dict[str, Any]:
    return _json(_ERROR, "Invalid input (the `field` names the offending field)")


def build_openapi(version: str, title: str) -> dict[str, Any]:
    obj = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Titanic survival prediction (ONNX, onnxruntime) with a KServe V2 compatible API."},
        "paths": {
            "/": {"get": {"summary": "Service info", "responses": {"200": _json(obj)}}},
            "/api/health": {"get": {"summary": "Health check", "responses": {"200": _json(obj)}}},
            "/api/inference": {"post": {
                "summary": "Predict survival of one passenger",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Passenger"}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/Prediction"}),
                              "400": _bad_request(), "413": _json(_ERROR, "Body too large")},
            }},
            "/api/container-info": {"get": {"summary": "Instance identity (title, version, environment, "
                                                       "instance id, hostname, pid)",
                                            "responses": {"200": _json(obj)}}},
            "/v2/health/live": {"get": {"summary": "V2 liveness", "responses": {"200": _json(obj)}}},
            "/v2/health/ready": {"get": {"summary": "V2 readiness (model loaded)",
                                         "responses": {"200": _json(obj), "503": _json(obj, "Not ready")}}},
            "/v2/models/titanic": {"get": {"summary": "V2 model metadata", "responses": {"200": _json(obj)}}},
            "/v2/models/titanic/ready": {"get": {"summary": "V2 model readiness",
                                                 "responses": {"200": _json(obj)}}},
            "/v2/models/titanic/infer": {"post": {
                "summary": "V2 batched inference: one FP32 input of shape [N,3] (sex_encoded, age, pclass)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/V2InferRequest"}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/V2InferResponse"}),
                              "400": _bad_request()},
            }},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json(obj)}}},
            "/docs": {"get": {"summary": "HTML documentation",
                              "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        },
        "components": {"schemas": {
            "Passenger": {"type": "object", "required": ["sex", "age", "pclass"], "properties": {
                "sex": {"type": "string", "pattern": _sex_pattern(),
                        "description": "female or male, any case (answered lower-case)"},
                "age": {"type": "number", "minimum": AGE_MIN, "maximum": AGE_MAX},
                "pclass": {"type": "integer", "enum": list(PCLASSES)},
            }, "example": {"sex": "female", "age": 29, "pclass": 1}},
            "Prediction": {"type": "object", "properties": {
                "prediction": {"type": "integer", "enum": [0, 1]},
                "prediction_status": {"type": "string", "enum": ["died", "survived"]},
                "probability": {"type": "number", "description": "probability of survival"},
                "passenger_info": {"$ref": "#/components/schemas/Passenger"},
            }},
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "field": {"type": "string"}, "reason": {"type": "string"}}},
            "V2Tensor": {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string"}, "data": {"type": "array", "items": {}}}},
            "V2Input": {"type": "object", "required": ["shape", "data"], "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "prefixItems": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_ROWS, "description": "rows (N)"},
                    {"const": N_FEATURES, "description": "sex_encoded, age, pclass"}],
                    "minItems": 2, "maxItems": 2, "items": False},
                "datatype": {"const": "FP32"},
                "data": {"type": "array", "items": {"anyOf": [_FP32, {"type": "array"}]},
                         "description": f"N*{N_FEATURES} finite FP32 numbers, flat or nested by row"}}},
            "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string", "description": "echoed in the answer"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Input"},
                           "minItems": 1, "maxItems": 1}},
                "example": {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32",
                                        "data": [0, 29, 1, 1, 30, 3]}]}},
            "V2InferResponse": {"type": "object", "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}},
        }},
    }


_FP32 = {"type": "number", "minimum": -FP32_MAX, "maximum": FP32_MAX}


def _sex_pattern() -> str:
    """`female`/`male` in any case with blanks around, as an ECMAScript regex (no inline flags)."""
    blank = "[" + BLANKS.encode("unicode_escape").decode() + "]*"
    either = "|".join("".join(f"[{c.upper()}{c}]" for c in name) for name in SEX_CODES)
    return f"^{blank}(?:{either}){blank}$"


def render_docs(doc: dict[str, Any]) -> str:
    """Plain HTML listing of the routes; no CDN so it works in air-gapped containers."""
    info = doc["info"]
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = ", ".join(op.get("responses", {}))
            rows.append(f"<tr><td><code>{html.escape(method.upper())}</code></td>"
                        f"<td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(codes)}</td></tr>")
    title = html.escape(f"{info['title']} {info['version']}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
            f"<h1>{title}</h1><p>{html.escape(info.get('description', ''))}</p>"
            f"<p>Machine-readable spec: <a href='openapi.json'>openapi.json</a></p>"
            f"<table border='1' cellpadding='4'><tr><th>Method</th><th>Path</th><th>Summary</th>"
            f"<th>Responses</th></tr>{''.join(rows)}</table></body></html>")
