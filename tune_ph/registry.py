"""Parts chosen by name (aggregations, heads, read encoders, abundance transforms, baseline models): a light catalog
of their names and a registry of their classes that declares each one it registers into that catalog.

The catalog is what settings validation and command-line flags read, so it imports nothing heavy (no torch, no
scikit-learn); the registry holds the classes themselves, beside the code that builds them. A part is a class with
its name (``name``, or the names it is registered under), the setting fields it reads (``fields``) and the facts
the catalog keeps of it (the catalog's record fields, as class attributes). Registering it is one line, and makes
its name a valid choice: ``@REGISTRY.register`` on the class, or ``REGISTRY.register(cls, "name")``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any, Generic, TypeVar

Record = TypeVar("Record")
Part = TypeVar("Part")


class Catalog(Mapping[str, Record]):
    """The names of one kind of part, each with its record (what settings know of it without importing it); a
    Mapping of name -> record, so it serves as a settings field's choices. Registries add the parts they register."""

    def __init__(self, kind: str, record: type[Record], *records: Record):
        self.kind, self.record = kind, record
        self._records: dict[str, Record] = {}
        for record in records:
            self.declare(record)

    def declare(self, record: Record) -> None:
        """Add a record; one that differs from the record already declared under its name is a ValueError (the
        light declaration and the part's own class must agree)."""
        name = record.name  # type: ignore[attr-defined]
        known = self._records.get(name)
        if known is not None and known != record:
            raise ValueError(f"{self.kind} {name!r} is declared as {known} but registered as {record}")
        self._records[name] = record

    def withdraw(self, name: str) -> None:
        """Forget a name (a part registered for a while, as a test's)."""
        self._records.pop(name, None)

    def __getitem__(self, name: str) -> Record:
        return self._records[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"Catalog({self.kind!r}: {', '.join(self._records)})"


class Registry(Generic[Part]):
    """The classes (or functions) of one kind of part by name, declared into a Catalog as they register."""

    def __init__(self, catalog: Catalog[Any]):
        self.catalog = catalog
        self._parts: dict[str, Part] = {}

    @property
    def kind(self) -> str:
        return self.catalog.kind

    def register(self, part: Part, *names: str) -> Part:
        """Register a part under its names (default: its ``name`` attribute); returns it, so it serves as a class
        decorator. Its catalog record is made of the part's attributes of the same names as the record's fields."""
        record = self.catalog.record
        facts = {f.name: getattr(part, f.name) for f in fields(record) if f.name != "name" and hasattr(part, f.name)}
        for name in names or (part.name,):  # type: ignore[attr-defined]
            self.catalog.declare(record(name=name, **facts))
            self._parts[name] = part
        return part

    def withdraw(self, name: str) -> None:
        """Unregister a name (a part registered for a while, as a test's)."""
        self._parts.pop(name, None)
        self.catalog.withdraw(name)

    def __getitem__(self, name: str) -> Part:
        try:
            return self._parts[name]
        except KeyError:
            known = [n for n in self.catalog if n in self._parts]  # in the order flags and errors show them
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(known)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def items(self) -> Iterator[tuple[str, Part]]:
        return iter(self._parts.items())


def undeclared(registry: Registry[Any]) -> list[str]:
    """Names the catalog declares that no class is registered under (a light declaration without its part)."""
    return [name for name in registry.catalog if name not in registry]
