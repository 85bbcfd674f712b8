"""The user's PyTorch model: built from its factory, its forward's arguments named, its outputs flattened.

Capture records what the model does; export builds the same model again to export it. Both take it
from here, so the two see the same model, the same argument names and the same outputs.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import imports
from orchestrator.errors import UserError
from orchestrator.signatures import check_call


def resolve_module(model: Any, path: str, field: str = "capture.module") -> Any:
    try:
        return model.get_submodule(path)
    except AttributeError:
        known = [name for name, _ in model.named_modules() if name]
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        nearby = [n for n in known if n.startswith(parent)] if parent else known
        import difflib

        close = difflib.get_close_matches(path, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"modules there: {', '.join(nearby[:8])}"
        raise UserError(f"no module '{path}' in {type(model).__name__}", field=field, hint=hint) from None


def _move(value: Any, device: str) -> Any:
    if hasattr(value, "to") and hasattr(value, "detach"):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_move(v, device) for v in value)
    return value


@dataclass(frozen=True)
class ModelSettings:
    """The model section as keyed: its factory, its inputs callable, their keyword arguments, the device.

    `sources` are keyed by their content and `env` by the digests of the values (the plan's files and
    env), so neither is here."""

    factory: str
    inputs: str
    kwargs: Mapping[str, object]  # the schema takes any object: whatever the factory accepts
    inputs_kwargs: Mapping[str, object]
    device: str

    @classmethod
    def from_keyed(cls, model: Mapping[str, Any]) -> ModelSettings:
        """From the model section (validated, defaults filled) or from its keyed JSON."""
        return cls(model["factory"], model["inputs"], copy.deepcopy(dict(model["kwargs"])),
                   copy.deepcopy(dict(model["inputs_kwargs"])), model["device"])

    def keyed(self) -> dict[str, Any]:
        return {"factory": self.factory, "kwargs": copy.deepcopy(dict(self.kwargs)), "inputs": self.inputs,
                "inputs_kwargs": copy.deepcopy(dict(self.inputs_kwargs)), "device": self.device}


def build_model(settings: ModelSettings, python_path: list[str]) -> tuple[Any, Any]:
    """The user's model (eval mode, on its device) and its forward arguments."""
    import torch

    with imports.search_path(python_path):
        factory = imports.resolve(settings.factory, "model.factory")
        make_inputs = imports.resolve(settings.inputs, "model.inputs")
    # The planner checked the kwargs where the source shows the signature simply; the live signature
    # covers the rest (classes with an inherited __init__, decorated or library callables).
    check_call(factory, dict(settings.kwargs), settings.factory, "model.kwargs")
    model = factory(**settings.kwargs)
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"the factory returned a {type(model).__name__}, expected a torch.nn.Module",
                        field="model.factory")
    check_call(make_inputs, dict(settings.inputs_kwargs), settings.inputs, "model.inputs_kwargs")
    inputs = make_inputs(**settings.inputs_kwargs)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device is cuda but torch sees no CUDA device", field="model.device")
    return model.eval().to(settings.device), _move(inputs, settings.device)


@dataclass
class ModelInputs:
    """The model's forward arguments by name: tensors become graph inputs, the rest stay constants."""

    kind: str  # "kwargs" (the inputs callable returned a dict) or "args" (a tuple, list or one tensor)
    order: list[str]  # every argument name, in call order
    tensors: dict[str, Any]
    extras: dict[str, Any]

    def call(self, model: Any, tensors: dict[str, Any]) -> Any:
        values = {**self.extras, **tensors}
        if self.kind == "kwargs":
            return model(**{name: values[name] for name in self.order})
        return model(*[values[name] for name in self.order])


def name_inputs(model: Any, inputs: Any) -> ModelInputs:
    """Name the forward arguments: dict keys, else the forward's parameter names (arg<i> beyond them)."""
    if isinstance(inputs, dict):
        kind, items = "kwargs", list(inputs.items())
    else:
        values = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
        try:
            parameters = [p.name for p in inspect.signature(model.forward).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            parameters = []
        names = parameters[:len(values)] + [f"arg{i}" for i in range(len(parameters), len(values))]
        kind, items = "args", list(zip(names, values, strict=True))
    tensors: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for name, value in items:
        if hasattr(value, "detach"):
            tensors[name] = value
        elif value is None or isinstance(value, int | float | str | bool):
            extras[name] = value
        else:
            raise UserError(f"model input '{name}' is a {type(value).__name__}; whole-model export takes tensors "
                            "(and plain numbers or strings, kept as constants)", field="model.inputs")
    return ModelInputs(kind, [name for name, _ in items], tensors, extras)


def flatten_outputs(result: Any) -> list[tuple[str | None, Any]]:
    """The tensors a forward returned, in order, with their dict keys where it returned a dict."""
    if hasattr(result, "detach"):
        return [(None, result)]
    if isinstance(result, dict):
        return [(str(k), v) for k, v in result.items() if hasattr(v, "detach")]
    if isinstance(result, list | tuple):
        return [(None, v) for v in result if hasattr(v, "detach")]
    return []


class ModuleStack:
    """Which modules are running right now (forward hooks on every named module)."""

    def __init__(self, model: Any):
        self.names: list[str] = []
        self.handles = []
        for name, module in model.named_modules():
            if name:
                self.handles.append(module.register_forward_pre_hook(self._enter(name)))
                self.handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, name: str) -> Any:
        def hook(*_: Any) -> None:  # returning None keeps the module's arguments
            self.names.append(name)
        return hook

    def _leave(self, *_: Any) -> None:  # returning None keeps the module's output
        self.names.pop()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
