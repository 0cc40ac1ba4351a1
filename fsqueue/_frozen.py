"""Frozen record classes without importing ``dataclasses``.

``dataclasses`` pulls in ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``): about 15 ms of
interpreter start-up, which a cron agent launched every minute pays on every run. Records here need
only a keyword/positional ``__init__``, immutability, equality, a hash and a repr, so ``@frozen``
builds those from the class annotations, and type checkers see a frozen dataclass (PEP 681).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[T], T]:
        return lambda decorated: decorated


_MISSING = object()


class _Factory:
    """A default computed per instance (``field(default_factory=list)``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """Declare a per-instance default, as ``dataclasses.field(default_factory=...)``."""
    return _Factory(default_factory)  # type: ignore[return-value]


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[T]) -> type[T]:
    """Make ``cls`` an immutable record whose fields are its annotated class attributes, in order."""
    names: list[str] = []
    defaults: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        # Not inspect.get_annotations: importing inspect is the start-up cost this module avoids.
        for name in klass.__dict__.get("__annotations__", {}):  # noqa: RUF063
            if name not in names:
                names.append(name)
            value = klass.__dict__.get(name, _MISSING)
            if value is not _MISSING:
                defaults[name] = value
    fields = tuple(names)
    methods: dict[str, object] = {
        "__record_fields__": fields,
        "__init__": _make_init(cls.__name__, fields, defaults, getattr(cls, "__post_init__", None)),
        "__setattr__": _refuse_setattr,
        "__delattr__": _refuse_delattr,
        "__eq__": _eq,
        "__hash__": _hash,
        "__repr__": _repr,
    }
    for name, method in methods.items():
        setattr(cls, name, method)
    return cls


def _make_init(
    owner: str, fields: tuple[str, ...], defaults: dict[str, object], post_init: Callable[[Any], None] | None
) -> Callable[..., None]:
    def __init__(self: object, *args: object, **kwargs: object) -> None:
        if len(args) > len(fields):
            raise TypeError(f"{owner}() takes {len(fields)} positional arguments but {len(args)} were given")
        for name, value in zip(fields, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{owner}() got multiple values for argument {name!r}")
            kwargs[name] = value
        for name in fields:
            if name in kwargs:
                value = kwargs.pop(name)
            elif name in defaults:
                value = defaults[name]
                if isinstance(value, _Factory):
                    value = value.make()
            else:
                raise TypeError(f"{owner}() missing required argument {name!r}")
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{owner}() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if post_init is not None:
            post_init(self)  # validation, as dataclasses' __post_init__

    return __init__


def _refuse_setattr(self: object, name: str, _value: object) -> None:
    raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")


def _refuse_delattr(self: object, name: str) -> None:
    raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")


def _values(obj: object) -> tuple[object, ...]:
    return tuple(getattr(obj, name) for name in type(obj).__record_fields__)  # type: ignore[attr-defined]


def _eq(self: object, other: object) -> object:
    if type(other) is not type(self):
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: object) -> int:
    return hash((type(self).__name__, *_values(self)))


def _repr(self: object) -> str:
    fields: tuple[str, ...] = type(self).__record_fields__  # type: ignore[attr-defined]
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
    return f"{type(self).__name__}({inner})"


def field_names(cls: type) -> tuple[str, ...]:
    """The fields of a ``@frozen`` class, in declaration order."""
    names: tuple[str, ...] = cls.__record_fields__  # type: ignore[attr-defined]
    return names


def replace(obj: T, **changes: Any) -> T:
    """A copy of ``obj`` with ``changes`` applied, as ``dataclasses.replace``."""
    values = {name: getattr(obj, name) for name in field_names(type(obj))}
    values.update(changes)
    return type(obj)(**values)


def as_dict(obj: object) -> dict[str, Any]:
    """Fields as a dict, nested records and lists of records converted too (``dataclasses.asdict``)."""
    return {name: _plain(getattr(obj, name)) for name in field_names(type(obj))}


def _plain(value: object) -> Any:
    if hasattr(type(value), "__record_fields__"):
        return as_dict(value)
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
