"""How the request models read as forms (the Prefect UI's run forms come from their JSON schemas), and
how a rejected request is told back in the form's words.

The models stay the flat requests that scripts and request files use; only their JSON schema is
dressed for a person, by one hook every request model runs (``form_schema``):

- **order**: a model's ``FORM_FIRST`` fields come first, in that order (what a person decides first);
  every other field follows in declaration order, so a field added later lands there by itself;
- **titled choices**: a field that may be empty shows its choices by name instead of by type. Outside
  a pipeline stage, ``None`` is "Unset" and a value is "Set"; in a stage (``FORM_NONE_TITLE``)
  ``None`` is "Inherit" (the pipeline's shared value) and ``""`` is "Unset". A flow's own optional
  arguments get the same through ``Unsettable[T]``;
- **ranges**: a number with both bounds says them in its description, from the bounds themselves.

``problem_lines`` turns a ``ValidationError`` into one line per problem that names the stage index,
the field's title and its JSON name, e.g. ``stage 1 (refine) · Source stage (src_stage): ...``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import PydanticCustomError

SET, UNSET, INHERIT = "Set", "Unset", "Inherit"

T = TypeVar("T")
Unsettable = Union[Annotated[T, Field(title=SET)], Annotated[None, Field(title=UNSET)]]  # noqa: UP007
"""``T | None`` whose form choices read "Set" and "Unset": for a flow's own arguments (``store``,
``out_dir``), which Prefect turns into a form from the signature, outside any request model."""
PROBLEMS = "request_problems"
"""Error type of the rules that look at several fields at once; its context holds the lines and
the ``(field, message)`` pairs they were written from."""

Problem = tuple[str, str]
"""A broken rule: the field it is about, and what is wrong (in words that name values and fields)."""


def field_label(model: type[BaseModel], name: str) -> str:
    """``Title (name)``: the words the form shows, and the name a request file uses (the title
    alone when it already holds the name, as in ``BPM`` or ``Denoise (t_start)``)."""
    info = model.model_fields.get(name)
    title = info.title if info is not None and info.title is not None else name
    return title if name.lower() in title.lower() else f"{title} ({name})"


def problems_error(lines: list[str], items: list[Problem] | None = None) -> PydanticCustomError:
    """The error a model validator raises for problems written as lines (with the ``(field,
    message)`` pairs they came from, when they are one model's own)."""
    return PydanticCustomError(PROBLEMS, "{problems}", {"problems": "\n".join(lines), "items": items})


def request_problems(model: type[BaseModel], problems: list[Problem]) -> PydanticCustomError:
    """The error for ``model``'s broken rules: one line per problem, led by the field's label."""
    return problems_error([f"{field_label(model, field)}: {message}" for field, message in problems], problems)


def rule_problems(error: ValidationError) -> list[Problem] | None:
    """The ``(field, message)`` pairs of an error raised by ``request_problems``, else None."""
    details = error.errors()
    if len(details) != 1 or details[0]["type"] != PROBLEMS or details[0]["ctx"]["items"] is None:
        return None
    return list(details[0]["ctx"]["items"])


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_text(member: dict[str, Any]) -> str | None:
    if member.get("type") not in ("integer", "number"):
        return None
    low, high = member.get("minimum"), member.get("maximum")
    above = member.get("exclusiveMinimum")
    if high is None or (low is None and above is None):
        return None
    if low is not None:
        return f"Range: {_number(low)} to {_number(high)}."
    return f"Range: above {_number(above)}, up to {_number(high)}."


def _titled_choices(prop: dict[str, Any], none_title: str) -> None:
    members = prop.get("anyOf")
    if not members or not any(member.get("type") == "null" for member in members):
        return
    values = [m for m in members if m.get("type") != "null" and m.get("const") != ""]
    for member in members:
        if member.get("type") == "null":
            member["title"] = none_title
        elif member.get("const") == "":
            member["title"] = UNSET
    if len(values) == 1:
        values[0]["title"] = SET
    order = {none_title: 0, SET: 1, UNSET: 2}
    members.sort(key=lambda member: order.get(member.get("title", SET), 1))


def form_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The pydantic ``json_schema_extra`` hook of every request model (see the module docstring)."""
    properties: dict[str, Any] = schema.get("properties", {})
    first: tuple[str, ...] = getattr(model, "FORM_FIRST", ())
    none_title: str = getattr(model, "FORM_NONE_TITLE", UNSET)
    ordered = {name: properties[name] for name in first if name in properties}
    ordered.update((name, prop) for name, prop in properties.items() if name not in ordered)
    schema["properties"] = ordered
    for prop in ordered.values():
        _titled_choices(prop, none_title)
        ranges = [text for text in map(_range_text, prop.get("anyOf", [prop])) if text is not None]
        if len(ranges) == 1 and "description" in prop:
            prop["description"] = f"{prop['description']} {ranges[0]}"


def problem_lines(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem of a request ``model`` rejected, in the form's words.

    Rule violations come as finished lines (``request_problems``); a single field's error (a type,
    a bound) is located by its path: ``stages.<i>.<field>`` names the stage index and the stage
    field's title, ``<field>`` the request field's.
    """
    lines: list[str] = []
    located: set[str] = set()
    for detail in error.errors():
        if detail["type"] == PROBLEMS:
            lines.extend(detail["ctx"]["problems"].split("\n"))
            continue
        where = _where(model, detail["loc"])
        if where in located:  # a value no choice of a field accepts: the first choice's reason says it
            continue
        located.add(where)
        lines.append(f"{where}: {detail['msg'].removeprefix('Value error, ')}")
    return lines


def _where(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The form's words for an error location: ``stage 1 · Seed (seed)``, ``BPM (bpm)``, ``request``."""
    parts: list[str] = []
    current: type[BaseModel] | None = model
    position = 0
    while position < len(loc) and current is not None:
        name = loc[position]
        if not isinstance(name, str) or name not in current.model_fields:
            break
        inner = _item_model(current, name)
        if inner is not None and position + 1 < len(loc) and isinstance(loc[position + 1], int):
            parts.append(f"{getattr(inner, 'FORM_ITEM', name)} {loc[position + 1]}")
            current, position = inner, position + 2
            continue
        parts.append(field_label(current, name))
        current, position = None, position + 1
    # Past the field: list positions count; the rest names the union choice that was tried.
    parts += [f"item {part}" for part in loc[position:] if isinstance(part, int)]
    return " · ".join(parts) if parts else "request"


def _item_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The model of ``name``'s items when it is a list of models (a pipeline's stages)."""
    annotation = model.model_fields[name].annotation
    for argument in getattr(annotation, "__args__", ()):
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument
    return None
