"""One JSON Schema (Draft 2020-12), checked in two steps.

Most documents an agency system sends are valid, so the first step is the schema compiled to
Python code by fastjsonschema: about ten times faster than the reference validator, and it
never copies the document into an exception. It decides alone only when it accepts.
Whatever it refuses goes to the reference validator, jsonschema, which says exactly what is
wrong (or, should the two ever differ, overrules it). jsonschema is imported on the first
refusal, not at start-up: it is the heaviest import of the agent.

The tests hold the two to each other (tests/test_hostile.py): the compiled form must never
accept a document the reference refuses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import fastjsonschema

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

#: A format assertion: True unless `value` is a string not in the format.
FormatCheck = Callable[[object], bool]


class SchemaCheck:
    def __init__(self, schema: Mapping[str, Any], formats: Mapping[str, FormatCheck]) -> None:
        self.schema = schema
        self.formats = dict(formats)
        # Without detailed exceptions the generated code is a third of the size; in that mode
        # fastjsonschema 2.22 cannot compile `const`, so it gets the one-value `enum`.
        self._compiled: Callable[[object], object] = fastjsonschema.compile(
            _const_as_enum(schema),
            formats=self.formats,
            use_formats=bool(self.formats),
            detailed_exceptions=False,
        )

    def accepts(self, doc: object) -> bool:
        """The compiled check alone (fast; never wrong when it says True)."""
        try:
            self._compiled(doc)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def errors(self, doc: object) -> Iterator[ValidationError]:
        """Every way `doc` breaks the schema, from the reference validator; none if valid."""
        if self.accepts(doc):
            return iter(())
        errors: Iterator[ValidationError] = self.reference.iter_errors(doc)
        return errors

    @functools.cached_property
    def reference(self) -> Draft202012Validator:
        from jsonschema import Draft202012Validator, FormatChecker

        checker = FormatChecker(())
        for name, check in self.formats.items():
            checker.checks(name)(check)
        return Draft202012Validator(self.schema, format_checker=checker)


def _const_as_enum(schema: Any) -> Any:
    """A copy of `schema` with every `const: x` written `enum: [x]` (the same assertion)."""
    if isinstance(schema, list):
        return [_const_as_enum(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "const":
            out["enum"] = [value]
        elif key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {name: _const_as_enum(sub) for name, sub in value.items()}
        else:
            out[key] = _const_as_enum(value)
    return out
