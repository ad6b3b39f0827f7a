"""Loading form templates from TOML files: one file per form, ``<form id>.toml``.

A template that cannot be used is refused as a whole with a :class:`TemplateError` that
names the file and the field (``fields[3] (id 'birth_date') → type: ...``).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.errors import EkichikaError
from shared.forms.models import Department, FormTemplate

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
"""The forms shipped with Ekichika."""


class TemplateError(EkichikaError):
    """A template file is unreadable or invalid. ``path`` is the file; ``location`` the
    place inside it (``fields[2] (id 'sex') → options``), or ``""`` for the whole file."""

    def __init__(self, path: Path, location: str, problem: str) -> None:
        where = f"{path}: {location}: " if location else f"{path}: "
        super().__init__(where + problem)
        self.path = path
        self.location = location
        self.problem = problem


def load_template(path: Path) -> FormTemplate:
    """Read and check one template file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TemplateError(path, "", f"cannot read the file ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise TemplateError(path, "", "the file is not UTF-8") from err
    except tomllib.TOMLDecodeError as err:
        raise TemplateError(path, "", f"not valid TOML ({err})") from err
    try:
        template = FormTemplate.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        location = _describe_location(raw, first["loc"])
        problem = first["msg"].removeprefix("Value error, ")
        more = err.error_count() - 1
        if more:
            problem += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise TemplateError(path, location, problem) from err
    if template.id != path.stem:
        raise TemplateError(
            path, "id", f"the id {template.id!r} must be the file name without .toml"
        )
    return template


class TemplateCatalog:
    """The forms of a directory, by id. Built once at start-up and shared read-only."""

    def __init__(self, templates: Sequence[FormTemplate]) -> None:
        self._by_id: dict[str, FormTemplate] = {}
        for template in templates:
            if template.id in self._by_id:
                raise ValueError(f"two templates have the id {template.id!r}")
            self._by_id[template.id] = template

    @classmethod
    def load(cls, directory: Path = TEMPLATE_DIR) -> TemplateCatalog:
        """Every ``*.toml`` of ``directory``, in file-name order."""
        paths = sorted(directory.glob("*.toml"))
        if not paths:
            raise TemplateError(directory, "", "no *.toml form templates in this directory")
        catalog = cls([load_template(p) for p in paths])
        logger.info("loaded %d form templates from %s", len(catalog), directory)
        return catalog

    def get(self, form_id: str) -> FormTemplate:
        """The template ``form_id`` (``KeyError`` if unknown)."""
        return self._by_id[form_id]

    def __contains__(self, form_id: object) -> bool:
        return form_id in self._by_id

    def __iter__(self) -> Iterator[FormTemplate]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def for_department(self, department: Department | str) -> list[FormTemplate]:
        return [t for t in self._by_id.values() if t.department == department]


def _describe_location(raw: Any, loc: Sequence[int | str]) -> str:
    """``('fields', 3, 'type')`` → ``fields[3] (id 'birth_date') → type``."""
    parts: list[str] = []
    node: Any = raw
    for key in loc:
        if isinstance(key, int):
            label = f"[{key}]"
            if isinstance(node, list) and 0 <= key < len(node):
                node = node[key]
                if isinstance(node, dict) and isinstance(node.get("id"), str):
                    label += f" (id {node['id']!r})"
            else:
                node = None
            if parts:
                parts[-1] += label
            else:
                parts.append(label)
            continue
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
    return " → ".join(parts)
