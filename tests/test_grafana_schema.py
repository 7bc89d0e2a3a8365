"""grafana/dashboards/ against Grafana's own dashboard types, with no Grafana server.

Grafana publishes its dashboard schema (the CUE kinds of grafana/grafana) as the typed models of the
grafana-foundation-sdk, generated from that schema; PyPI carries them for Grafana 10.1, the oldest
Grafana the dashboards require is 10.0. Each dashboard is decoded through the SDK's models (the
panel options and field configs through the models of their panel plugin, the queries through
Prometheus's), then checked two ways: every value has the type, enum member or literal the schema
gives its field, and encoding the models again gives back every key of the file (a key the schema
does not know is dropped by the decoder, so a misspelt or invented field fails here).
"""

from __future__ import annotations

import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models.dashboard import Dashboard

DASHBOARDS = sorted((Path(__file__).parent.parent / "grafana" / "dashboards").glob("*.json"))
#: Keys of Grafana's export format around the dashboard model (import inputs, required plugins).
EXPORT_KEYS = {"__inputs", "__requires"}

plugins.register_default_plugins()  # the panel and query models, by plugin id


def _is_model_class(cls: type) -> bool:
    return hasattr(cls, "from_json") and hasattr(cls, "to_json")


def _is_model(value: object) -> bool:
    return _is_model_class(type(value))


def type_problems(value: object, hint: Any, path: str) -> list[str]:
    """Where ``value`` (decoded by the SDK) differs from the type the schema gives it; empty when it fits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return []
        for arg in args:  # a union of models (Panel | RowPanel): the one the decoder chose
            if isinstance(arg, type) and _is_model_class(arg) and isinstance(value, arg):
                return model_problems(value, path)
        tried = [type_problems(value, arg, path) for arg in args if arg is not type(None)]
        return [] if any(not p for p in tried) else min(tried, key=len)
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__} where the schema has a list"]
        return [p for i, item in enumerate(value) for p in type_problems(item, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where the schema has an object"]
        return [p for k, item in value.items() for p in type_problems(item, args[1], f"{path}.{k}")]
    if hint is object or hint is Any:
        return model_problems(value, path) if _is_model(value) else []
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = [member.value for member in hint]
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if hint is bool:
        return [] if isinstance(value, bool) else [f"{path}: {value!r} is not a boolean"]
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not an integer"]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a number"]
    if hint is str:
        return [] if isinstance(value, str) else [f"{path}: {value!r} is not a string"]
    if isinstance(hint, type):
        if isinstance(value, UnknownDataquery):
            return [f"{path}: a query of a data source the schema does not know"]
        if isinstance(value, dict) and _is_model_class(hint):  # a list the decoder keeps as JSON
            decoded = getattr(hint, "from_json")(value)  # noqa: B009  (no type stub says it has one)
            return model_problems(decoded, path) + lost(value, encode(decoded), path)
        if not isinstance(value, hint):
            return [f"{path}: {type(value).__name__} where the schema has {hint.__name__}"]
        return model_problems(value, path)
    raise AssertionError(f"{path}: a type this check does not know: {hint!r}")


def model_problems(model: object, path: str) -> list[str]:
    """Type problems of every field of a decoded model, by the type hints of its class."""
    hints = typing.get_type_hints(type(model))
    return [
        p for name, hint in hints.items() for p in type_problems(getattr(model, name), hint, f"{path}.{name}")
    ]


def encode(model: object) -> Any:
    """A decoded model as plain JSON values, the way the SDK writes it."""
    return json.loads(json.dumps(model, cls=JSONEncoder))


def lost(original: object, encoded: object, path: str) -> list[str]:
    """Keys and values of ``original`` missing or changed in ``encoded`` (defaults it adds are fine)."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            return [f"{path}: became {encoded!r}"]
        return [
            p
            for key, value in original.items()
            for p in (
                lost(value, encoded[key], f"{path}.{key}")
                if key in encoded
                else [f"{path}.{key}: not a field of the schema"]
            )
        ]
    if isinstance(original, list):
        if not isinstance(encoded, list) or len(encoded) != len(original):
            return [f"{path}: became {encoded!r}"]
        return [
            p
            for i, (a, b) in enumerate(zip(original, encoded, strict=True))
            for p in lost(a, b, f"{path}[{i}]")
        ]
    return [] if original == encoded else [f"{path}: {original!r} became {encoded!r}"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_fits_grafanas_dashboard_schema(path: Path) -> None:
    document = json.loads(path.read_text())
    model = {k: v for k, v in document.items() if k not in EXPORT_KEYS}
    dashboard = Dashboard.from_json(model)
    assert not model_problems(dashboard, "dashboard"), "\n".join(model_problems(dashboard, "dashboard"))
    encoded = encode(dashboard)
    assert not lost(model, encoded, "dashboard"), "\n".join(lost(model, encoded, "dashboard"))


def test_the_check_finds_what_the_schema_forbids() -> None:
    """A wrong type, an enum value outside the schema's, an unknown field, an unknown data source."""
    document = json.loads(DASHBOARDS[0].read_text())
    model = {k: v for k, v in document.items() if k not in EXPORT_KEYS}
    panel = model["panels"][0]
    panel["gridPos"]["w"] = "wide"
    panel["targets"][0]["format"] = "csv"
    panel["fieldConfig"]["defaults"]["unitt"] = "s"
    unknown = {"type": "no-such-source", "uid": "x"}
    model["panels"][1]["datasource"] = model["panels"][1]["targets"][0]["datasource"] = unknown
    dashboard = Dashboard.from_json(model)
    problems = "\n".join(model_problems(dashboard, "dashboard"))
    assert "grid_pos.w: 'wide' is not an integer" in problems
    assert "format_val: 'csv' is not one of" in problems
    assert "a query of a data source the schema does not know" in problems
    encoded = encode(dashboard)
    assert "dashboard.panels[0].fieldConfig.defaults.unitt: not a field of the schema" in lost(
        model, encoded, "dashboard"
    )
