"""Command-line options derived from a config dataclass, so that each default lives in one place (the
dataclass) and `--help` still shows it.

    config_command(train_app, "volume-query", TrainConfig, body, help="...", option_help={...})

registers a typer command with one option per field of the dataclass: `batch_size` -> `--batch-size`
(`out` also gets `-o`); a field without a default is required. Types:

- `int`, `float`, `str`, `Path` and `X | None` of them: a typed option (typer parses `1e-4` as a float);
- `bool`: a `--name/--no-name` flag;
- `tuple[int, ...]`, `tuple[int, int]`: one comma- (or `x`-) separated value, `48,96,192,384`, `640x480`
  (a fixed-length tuple given one number repeats it: `224` -> `(224, 224)`);
- a nested dataclass, or a `dict` field with `metadata={"options_of": "module:Class"}`: a repeatable
  `KEY=VALUE` option whose values are converted by that dataclass's field types (`d_feat=8`, `lr=1e-4`,
  `flag=true`); an unknown key is an error naming the known ones.

`body(cfg, **extra)` gets the built config and the values of `extra` options (ones that are not config
fields, e.g. `--gaps`). A `ShardyardError` or `ValueError` from building the config or running the body
is printed as `error: ...` with exit status 1; a value that does not convert is a usage error (status 2).
The dataclass module should not import torch, so that the CLI starts fast (see `train/configs.py`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import typer

from shardyard.commands.common import fail
from shardyard.errors import ShardyardError

__all__ = ["FALSE", "SCALARS", "TRUE", "Section", "build_config", "config_command", "convert", "field_hints",
           "field_option", "key_values", "nested_class", "nested_name", "section_config", "sections_command"]

SCALARS = (int, float, str, Path)
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def nested_name(f: dataclasses.Field, hint: Any) -> str | None:
    """Name of the dataclass whose fields a `KEY=VALUE` option sets for field `f` (None when `f` is not
    such a field), without importing it: the CLI must start without the trainers' imports (torch)."""
    target = f.metadata.get("options_of")
    if isinstance(target, str):
        return target.partition(":")[2]
    if target is not None:
        return target.__name__
    return hint.__name__ if dataclasses.is_dataclass(hint) else None


def nested_class(f: dataclasses.Field, hint: Any) -> type | None:
    """The dataclass whose fields a `KEY=VALUE` option sets for field `f` (imported when named by a
    `"module:Class"` string), or None."""
    target = f.metadata.get("options_of")
    if isinstance(target, str):
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    if target is not None:
        return target
    return hint if dataclasses.is_dataclass(hint) else None


def convert(text: str, hint: Any, what: str) -> Any:
    """`text` as a value of type `hint` (int, float, bool, str, Path, tuples of them, `X | None`).
    Raises typer.BadParameter naming `what` when it does not convert."""
    base, optional = _strip_optional(hint)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            if text.strip().lower() not in TRUE + FALSE:
                raise ValueError(f"not a boolean (true/false): {text!r}")
            return text.strip().lower() in TRUE
        if typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            parts = [p for p in text.replace("x", ",").replace("X", ",").split(",") if p.strip()]
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(convert(p, args[0], what) for p in parts)
            if len(parts) == 1 and len(args) > 1:
                parts = parts * len(args)
            if len(parts) != len(args):
                raise ValueError(f"needs {len(args)} comma-separated values, got {text!r}")
            return tuple(convert(p, a, what) for p, a in zip(parts, args))
        if base in SCALARS:
            return base(text.strip()) if base is not str else text
    except ValueError as e:
        raise typer.BadParameter(f"{what}: {e}") from None
    raise typer.BadParameter(f"{what}: fields of type {hint} cannot be set from the command line")


def key_values(items: Sequence[str] | None, cls: type, what: str) -> dict[str, Any]:
    """`["k=v", ...]` -> `{k: v converted by cls's field type}`. Raises typer.BadParameter for a malformed
    item or an unknown key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise typer.BadParameter(f"{what}: expected KEY=VALUE, got {item!r}")
        if key not in names:
            raise typer.BadParameter(f"{what}: {cls.__name__} has no field {key!r} (fields: {', '.join(names)})")
        out[key] = convert(value, hints[key], f"{what} {key}")
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default_text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def field_option(f: dataclasses.Field, hint: Any, flag: str, help_text: str) -> inspect.Parameter:
    """The typer parameter of one dataclass field (see the module docstring for the mapping)."""
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else ...)
    decls = (flag, "-o") if f.name == "out" else (flag,)
    base, optional = _strip_optional(hint)
    nested = nested_name(f, hint) if not (base in SCALARS or base is bool) else None
    if base is bool:
        annotation, opt = bool, typer.Option(default, f"{flag}/--no-{flag[2:]}", help=help_text)
    elif nested is not None:
        text = f"{help_text} KEY=VALUE, repeatable: fields of {nested}.".strip()
        annotation, opt = Optional[list[str]], typer.Option(None, flag, help=text)
    elif typing.get_origin(base) is tuple:
        shown = _default_text(default) if has_default and default is not None else None
        annotation = Optional[str] if shown is None else str
        opt = typer.Option(shown if has_default else ..., flag, help=f"{help_text} Comma-separated.".strip())
    elif base in SCALARS:
        annotation = Optional[base] if optional or default is None else base
        opt = typer.Option(default, *decls, help=help_text)
    else:
        raise TypeError(f"field {f.name}: type {hint} has no command-line form")
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation)


def build_config(cls: type, values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> Any:
    """The dataclass `cls` from the raw option values typer parsed (tuples from text, `KEY=VALUE` lists
    into dicts or nested dataclasses); fields absent from `values` keep their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        raw, hint = values[f.name], hints[f.name]
        what = (names or {}).get(f.name, _flag(f.name))
        base, _ = _strip_optional(hint)
        nested = nested_class(f, hint) if not (base in SCALARS or base is bool) else None
        if nested is not None:
            kv = key_values(raw, nested, what)
            kwargs[f.name] = dataclasses.replace(f.default_factory(), **kv) if dataclasses.is_dataclass(hint) else kv
        elif typing.get_origin(base) is tuple and isinstance(raw, str):
            kwargs[f.name] = convert(raw, hint, what)
        else:
            kwargs[f.name] = raw
    return cls(**kwargs)


def config_command(app: typer.Typer, name: str, cls: type, body: Callable[..., None], *, help: str,
                   option_help: Mapping[str, str] | None = None, names: Mapping[str, str] | None = None,
                   skip: Sequence[str] = (), extra: Mapping[str, tuple[Any, Any]] | None = None) -> Callable:
    """Register `app`'s command `name` with one option per field of the dataclass `cls` (but `skip`),
    then the `extra` options (`{param: (annotation, typer.Option(...))}`). option_help: help per field;
    names: flag per field (default `--field-name`). Returns the command function."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = (names or {}).get(f.name, _flag(f.name))
        params.append(field_option(f, hints[f.name], flag, (option_help or {}).get(f.name, "")))
    for pname, (annotation, opt) in (extra or {}).items():
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation))

    def command(**values: Any) -> None:
        extras = {k: values.pop(k) for k in (extra or {})}
        try:
            cfg = build_config(cls, values, names)
            body(cfg, **extras)
        except (ShardyardError, ValueError) as e:
            fail(e)

    command.__signature__ = inspect.Signature(params)           # typer reads the options from these two
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    app.command(name, help=help)(command)
    return command


@dataclasses.dataclass(frozen=True)
class Section:
    """One config dataclass of a command built from several (`sections_command`): every field but `skip`
    is an option."""

    cls: type
    skip: tuple[str, ...] = ()


def _annotation(name: str, annotation: Any, scope: dict[str, Any]) -> Any:
    """One field's annotation, resolved by `typing.get_type_hints` in its module's `scope` (a string under
    `from __future__ import annotations`), without resolving the class's other fields."""
    def holder() -> None:
        pass
    holder.__annotations__ = {name: annotation}
    return typing.get_type_hints(holder, globalns=scope)[name]


def field_hints(cls: type, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The type of each field of the dataclass `cls` but `skip`, evaluated one by one (a skipped field may
    name a type its module imports only for type checkers, e.g. one whose import is slow). `str | Path`
    reads as `str`: such a field takes a path or a URL."""
    scope = vars(importlib.import_module(cls.__module__))
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = _annotation(f.name, f.type, scope)
        args = set(typing.get_args(hint)) if typing.get_origin(hint) in (Union, types.UnionType) else set()
        if str in args and args <= {str, Path, type(None)}:
            hint = Optional[str] if type(None) in args else str
        out[f.name] = hint
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else ...


def _section_param(f: dataclasses.Field, hint: Any, flag: str, help_text: str, form: str, factor: float) -> Any:
    """The typer parameter of one field in one of the forms of `sections_command`."""
    default = _default(f)
    if form == "argument":  # named as `flag` (shown upper-case), given back to the body as the field
        opt = typer.Argument(default, help=help_text)
        return inspect.Parameter(flag, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=opt, annotation=hint)
    if form == "repeat":
        annotation, opt = Optional[list[str]], typer.Option(None, flag, help=help_text)
    elif form == "scale":
        annotation, opt = float, typer.Option(default * factor, flag, help=help_text)
    elif form == "text":
        shown = None if default is None or default is ... else _default_text(default)
        annotation, opt = (Optional[str] if shown is None else str), typer.Option(shown, flag, help=help_text)
    else:
        return field_option(f, hint, flag, help_text)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation)


def sections_command(app: typer.Typer, name: str, sections: Sequence[Section], body: Callable[..., None], *,
                     help: str, option_help: Mapping[str, str] | None = None,
                     names: Mapping[str, str] | None = None, arguments: Sequence[str] = (),
                     repeat: Sequence[str] = (), scale: Mapping[str, float] | None = None,
                     text: Sequence[str] = (), extra: Mapping[str, tuple[Any, Any]] | None = None) -> Callable:
    """Register `app`'s command `name` with one option per field of each section's dataclass (a field that
    several sections have is one option), then the `extra` options (`{param: (annotation, typer.Option or
    default)}`); `body(**values)` gets every field's value by name, and the extras.

    Forms beyond `config_command`'s, by field name: `arguments` are positional (`names` gives the metavar);
    `repeat` is a repeatable option, given as a tuple (None when absent); `scale` shows the field times a
    factor (`timestamp_tolerance_s` as milliseconds: 1000) and divides it back; `text` passes the option's
    text for the body to parse (its default shown as text). `names`: flag per field (default `--field-name`).
    Errors as `config_command`'s."""
    params, hints, forms = [], {}, {}
    for section in sections:
        for fname, hint in field_hints(section.cls, section.skip).items():
            if fname in hints:
                continue
            f = next(x for x in dataclasses.fields(section.cls) if x.name == fname)
            form = ("argument" if fname in arguments else "repeat" if fname in repeat else
                    "scale" if fname in (scale or {}) else "text" if fname in text else "option")
            hints[fname], forms[fname] = hint, form
            flag = (names or {}).get(fname, fname if form == "argument" else _flag(fname))
            params.append(_section_param(f, hint, flag, (option_help or {}).get(fname, ""), form,
                                         (scale or {}).get(fname, 1.0)))
    for pname, (annotation, opt) in (extra or {}).items():
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation))
    params.sort(key=lambda p: (not isinstance(p.default, typer.models.ArgumentInfo), p.name != "out"))  # args, out

    def command(**values: Any) -> None:
        try:
            for fname, form in forms.items():
                if form == "argument":
                    values[fname] = values.pop((names or {}).get(fname, fname))
                raw = values[fname]
                if form == "repeat":
                    values[fname] = tuple(raw) if raw else None
                elif form == "scale":
                    values[fname] = raw / scale[fname]
                elif form == "option" and isinstance(raw, str):
                    base, _ = _strip_optional(hints[fname])
                    if typing.get_origin(base) is tuple:
                        values[fname] = convert(raw, hints[fname], (names or {}).get(fname, _flag(fname)))
            body(**values)
        except (ShardyardError, ValueError) as e:
            fail(e)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    app.command(name, help=help)(command)
    return command


def section_config(cls: type, values: Mapping[str, Any], **given: Any) -> Any:
    """The dataclass `cls` from the `values` of its fields (a `sections_command` body's), and `given`."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in values.items() if k in names and k not in given}, **given)
