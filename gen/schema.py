"""Output schemas: a pydantic model (`schemas/x.py:ClassName`) or a JSON Schema file (`schemas/x.json`)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from gen.errors import ConfigError


class SchemaMismatch(Exception):
    """The answer is JSON but does not fit the schema; the message is fed back to the teacher."""


class Schema:
    """A loaded schema: its JSON Schema (sent to the teacher) and a validator for answers."""

    def __init__(
        self, ref: str, name: str, json_schema: dict[str, Any], model: type[BaseModel] | None
    ) -> None:
        self.ref = ref
        self.name = name
        self.json_schema = json_schema
        self.model = model
        self.sha256 = hashlib.sha256(orjson.dumps(json_schema, option=orjson.OPT_SORT_KEYS)).hexdigest()
        self._validator: Any = None
        if model is None:
            import jsonschema

            cls = jsonschema.validators.validator_for(json_schema)
            self._validator = cls(json_schema)

    def validate(self, json_text: str) -> str:
        """Validate JSON text; return the validated value as compact JSON text. Raises SchemaMismatch."""
        if self.model is not None:
            try:
                # pydantic parses, validates and serialises in Rust: no Python dict in between.
                return self.model.model_validate_json(json_text).model_dump_json()
            except ValidationError as e:
                raise SchemaMismatch(_pydantic_summary(e)) from None
        value = orjson.loads(json_text)
        error = next(iter(self._validator.iter_errors(value)), None)
        if error is not None:
            import jsonschema.exceptions

            best = jsonschema.exceptions.best_match(self._validator.iter_errors(value)) or error
            path = "/".join(str(p) for p in best.absolute_path) or "(root)"
            raise SchemaMismatch(f"{path}: {best.message}")
        return orjson.dumps(value).decode()


def _pydantic_summary(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False)[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = e.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def load_schema(ref: str, *, base_dir: Path, where: Path) -> Schema:
    """Load `FILE.py:ClassName` (a pydantic model) or `FILE.json` (a JSON Schema), relative to base_dir."""
    file_part, _, cls_name = ref.partition(":")
    path = Path(file_part)
    if not path.is_absolute():
        path = base_dir / path
    if path.suffix == ".json":
        return _load_json_schema(ref, path, where)
    if path.suffix == ".py":
        if not cls_name:
            raise ConfigError(where, f"schema {ref!r}: name the model class, as FILE.py:ClassName")
        return _load_pydantic(ref, path, cls_name, where)
    raise ConfigError(where, f"schema {ref!r}: expected FILE.py:ClassName or FILE.json")


def _load_json_schema(ref: str, path: Path, where: Path) -> Schema:
    import jsonschema

    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(where, f"schema {path}: no such file") from None
    except orjson.JSONDecodeError as e:
        raise ConfigError(where, f"schema {path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(where, f"schema {path}: a JSON Schema must be an object")
    try:
        jsonschema.validators.validator_for(data).check_schema(data)
    except jsonschema.exceptions.SchemaError as e:
        raise ConfigError(where, f"schema {path}: not a valid JSON Schema ({e.message})") from None
    return Schema(ref, str(data.get("title") or path.stem), data, None)


def _load_pydantic(ref: str, path: Path, cls_name: str, where: Path) -> Schema:
    if not path.is_file():
        raise ConfigError(where, f"schema {path}: no such file")
    module_name = f"gen_schema_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(where, f"schema {path}: cannot import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pydantic resolves forward references through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code can raise anything; report it as one line
        sys.modules.pop(module_name, None)
        raise ConfigError(where, f"schema {path}: import failed: {type(e).__name__}: {e}") from None
    model = getattr(module, cls_name, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(where, f"schema {path}: no pydantic model named {cls_name!r}")
    try:
        json_schema = model.model_json_schema()
    except Exception as e:
        raise ConfigError(where, f"schema {ref}: cannot build its JSON Schema: {e}") from None
    return Schema(ref, cls_name, json_schema, model)
