"""`python -m training train`'s options, generated from `TrainingConfig`: each option is one declaration there
(`schemas.manifest.option`: name, type, default, help and checks), and this module turns the declarations into
argparse arguments and the parsed arguments back into a validated config."""

import argparse
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from schemas.manifest import TrainingConfig
from service.runtime.architectures import ARCHITECTURES

# Options whose choices are a registry of the runtime's (the schema cannot import it).
REGISTRY_CHOICES = {"architecture": sorted(ARCHITECTURES)}


def option_names(config_class: type[BaseModel] = TrainingConfig) -> list[str]:
    """The config's option fields, in declaration order."""
    return [name for name, field in config_class.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("option")]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, config_class: type[BaseModel] = TrainingConfig) -> None:
    for name in option_names(config_class):
        field = config_class.model_fields[name]
        arguments = {"dest": name, "default": field.default,
                     "help": f"{field.description.replace('%', '%%')} (default: %(default)s)"}
        annotation, origin = field.annotation, get_origin(field.annotation)
        if origin is Literal:
            arguments["choices"] = list(get_args(annotation))
        elif origin is tuple:
            kinds = get_args(annotation)
            arguments |= {"type": kinds[0], "nargs": len(kinds), "metavar": ("LOW", "HIGH")[:len(kinds)]}
        elif annotation is bool:
            arguments["action"] = argparse.BooleanOptionalAction
        else:
            arguments["type"] = annotation
        if name in REGISTRY_CHOICES:
            arguments["choices"] = REGISTRY_CHOICES[name]
        parser.add_argument(flag(name), **arguments)


def shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     config_class: type[BaseModel] = TrainingConfig) -> BaseModel:
    """The config the parsed options describe; a value its declaration refuses stops the parser, naming it."""
    values = {name: getattr(args, name) for name in option_names(config_class)}
    try:
        return config_class(**values)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            message = problem["msg"].removeprefix("Value error, ")
            name = problem["loc"][0] if problem["loc"] else None
            problems.append(f"{flag(name)} {shown(values[name])}: {message}" if name in values else message)
        parser.error("; ".join(problems))


def command(training: dict, config_class: type[BaseModel] = TrainingConfig) -> str:
    """The `train` command that a recorded config came from: every option it recorded, in declaration order
    (the re-framing ranges only where --consistency used them, the distillation's options only where it had a
    teacher)."""
    skipped = {"reframe_scale", "reframe_shift", "reframe_rotation"} if not training.get("consistency") else set()
    if training.get("teacher", "none") == "none":
        skipped |= {"teacher", "distill", "distill_temperature"}
    return "python -m training train --out RUN_DIR " + " ".join(
        f"{flag(name)} {shown(training[name])}" for name in option_names(config_class)
        if name in training and name not in skipped)
