"""The OpenAPI schema of the gateway, with the request bodies of the routes that parse their own body.

The hot routes read and validate their body themselves (faster than FastAPI's body dependency), so FastAPI does
not know their body models: `with_bodies` adds each one as a component and refers to it from its route, so that
the schema describes every route's body for clients, and for property-based fuzzing.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def with_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> Callable[[], dict]:
    """An `app.openapi` replacement: FastAPI's schema plus `bodies` ({path: model}) as the POST bodies."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            body = model.model_json_schema(ref_template=REF)
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
            }
        app.openapi_schema = schema
        return schema

    return openapi
