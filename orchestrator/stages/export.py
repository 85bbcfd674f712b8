"""export: the plugin graph as ONNX, the declared callable replaced by a plugin node.

scope 'call' builds the seed's one-call test model around the captured call; scope 'model'
exports the whole model. Either way the callable is swapped (for the duration of the export only)
for a function that casts integer inputs to the plugin's contract dtypes (so the plugin never
reads int64 as int32, the cause of all-zero outputs), calls an autograd.Function whose `symbolic`
emits the plugin node (op, domain, plugin_version, plugin_namespace, with its output type and
shape set), and reshapes the plugin's own output (e.g. MSDA's [N, Lq, M, D]) back to what the model
used. While tracing, that function still computes the real result, so traced shapes and values are
true. Arguments the plugin does not take (im2col_step) are dropped.

Writes model.onnx and export.json (graph inputs/outputs, plugin nodes, casts).
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import imports
from orchestrator import plugins as catalog
from orchestrator.errors import UserError
from orchestrator.stages import StageCall, StageResult

ONNX_ATTR_SUFFIX = {bool: "i", int: "i", float: "f", str: "s"}


def _attr_kwargs(plugin: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"plugin_version_s": plugin["version"], "plugin_namespace_s": plugin["namespace"]}
    for name, value in plugin.get("attributes", {}).items():
        sample = value[0] if isinstance(value, list) and value else value
        suffix = ONNX_ATTR_SUFFIX.get(type(sample))
        if suffix is None:
            raise UserError(f"attribute '{name}' has a {type(value).__name__} value; use numbers or strings",
                            field="export.plugins.attributes")
        attrs[f"{name}_{suffix}"] = value
    return attrs


def plugin_function(plugin: dict[str, Any], entry: catalog.PluginEntry) -> Any:
    """An autograd.Function whose forward computes the real output and whose symbolic is the plugin node."""
    import torch

    op_name = f"{plugin['domain']}::{plugin['op']}"
    attrs = _attr_kwargs(plugin)

    class PluginNode(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, compute: Callable[..., Any], *inputs: Any) -> Any:
            with _untraced():  # the node's output is recorded; how it was computed is not
                return compute(*inputs)

        @staticmethod
        def symbolic(g: Any, compute: Any, *inputs: Any) -> Any:
            node = g.op(op_name, *inputs, **attrs)
            sizes = [i.type().sizes() if i.type().dim() is not None else None for i in inputs]
            if all(s is not None for s in sizes):
                node.setType(inputs[0].type().with_sizes(list(entry.output_shape([tuple(s) for s in sizes]))))
            return node

    PluginNode.__name__ = f"{plugin['op']}Node"
    return PluginNode


def make_replacement(plugin: dict[str, Any], entry: catalog.PluginEntry, original: Callable[..., Any]) -> Any:
    """The function that stands in for `original` during export."""
    import torch

    node = plugin_function(plugin, entry)
    try:
        signature: inspect.Signature | None = inspect.signature(original)
    except (TypeError, ValueError):
        signature = None
    names = plugin["inputs"]
    casts = {name: getattr(torch, dtype) for name, dtype in plugin["dtypes"].items()
             if dtype.startswith(("int", "uint"))}

    def replacement(*args: Any, **kwargs: Any) -> Any:
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
        else:
            values = dict(zip(names, args, strict=False)) | kwargs
        missing = [n for n in names if n not in values]
        if missing:
            raise UserError(f"the replaced call has no argument(s) {', '.join(missing)}; plugin inputs are "
                            f"mapped by name ({', '.join(names)})", field="export.plugins.inputs")
        inputs = []
        for name in names:
            tensor = values[name]
            if name in casts and tensor.dtype != casts[name]:
                tensor = tensor.to(casts[name])
            inputs.append(tensor)
        values.update(zip(names, inputs, strict=True))
        with _untraced(), torch.no_grad():
            real = original(**values) if signature is not None else original(*inputs)
        result_shape = tuple(int(d) for d in real.shape)
        plugin_shape = tuple(int(d) for d in entry.output_shape([tuple(int(d) for d in t.shape) for t in inputs]))
        out = node.apply(lambda *_: real.reshape(plugin_shape), *inputs)
        return out if plugin_shape == result_shape else out.reshape(result_shape)

    return replacement


class _untraced:
    """Run the real computation without recording it in the TorchScript trace (only its result is used)."""

    def __enter__(self) -> None:
        import torch

        self.state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch._C._set_tracing_state(self.state)


def kernel_callable(plugin: dict[str, Any], entry: catalog.PluginEntry) -> Callable[..., Any]:
    """Without a `replace` callable, the catalog's reference kernel computes the real result."""
    import numpy as np
    import torch

    kernel = entry.load_kernel()
    attrs = plugin.get("attributes", {})
    names = plugin["inputs"]

    def compute(*args: Any, **kwargs: Any) -> Any:
        given = dict(zip(names, args, strict=False)) | kwargs
        tensors = [given[name] for name in names]
        outputs = kernel([np.asarray(t.detach().cpu().numpy()) for t in tensors], attrs)
        result = torch.from_numpy(np.ascontiguousarray(outputs[0])).to(tensors[0].device)
        return result.reshape(entry.result_shape(tuple(result.shape))) if entry.result_shape else result

    parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    compute.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return compute


def run(call: StageCall) -> StageResult:
    settings = call.config["export"]
    capture = call.inputs["capture"]
    out = call.out / "model.onnx"
    if call.paths.get("onnx"):
        return _use_given(call, Path(call.paths["onnx"]), out)
    if settings["exporter"] == "dynamo":
        raise UserError("the dynamo exporter is not available yet; use exporter: torchscript",
                        field="export.exporter")
    if settings["scope"] != "call":
        raise UserError("scope 'model' is not available yet; use scope: call", field="export.scope")
    return _export_call(call, settings, capture, out)


def _use_given(call: StageCall, source: Path, out: Path) -> StageResult:
    import onnx

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is the user's file
        raise UserError(f"'{source}' is not an ONNX model: {type(exc).__name__}: {str(exc)[:200]}",
                        field="export.onnx") from None
    shutil.copyfile(source, out)
    info = describe_graph(model)
    (call.out / "export.json").write_text(json.dumps(info, indent=1))
    return StageResult(f"given ONNX {source.name}, {_plugin_summary(info)}", info)


def _export_call(call: StageCall, settings: dict[str, Any], capture: Any, out: Path) -> StageResult:
    import numpy as np
    import torch

    record = json.loads((capture.path / "capture.json").read_text())
    plugin = settings["plugins"][0]
    entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
    if plugin.get("replace"):
        with imports.search_path(call.paths["python_path"]):
            original = imports.resolve(plugin["replace"], "export.plugins[0].replace")
    else:
        original = kernel_callable(plugin, entry)
    replacement = make_replacement(plugin, entry, original)
    names = plugin["inputs"]
    inputs = {name: torch.from_numpy(np.load(capture.path / meta["file"])) for name, meta in record["inputs"].items()}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UserError(f"the capture has no tensor(s) {', '.join(missing)} for the plugin inputs; it has "
                        f"{', '.join(inputs)}", field="export.plugins[0].inputs")
    extras = record.get("extras", {})
    order = [a["name"] for a in record.get("args", [])] or names

    class OneCall(torch.nn.Module):
        """The seed's test model: the plugin call alone, fed the captured tensors."""

        def forward(self, *tensors: Any) -> Any:
            values = dict(zip(names, tensors, strict=True))
            args = {name: values[name] if name in values else extras[name] for name in order
                    if name in values or name in extras}
            return replacement(**args)

    output_names = list(record["outputs"])[:1]
    call.progress("tracing the one-call model")
    _torch_export(OneCall(), tuple(inputs[n] for n in names), out, settings, names, output_names)
    return _finish(call, out, settings)


def _torch_export(module: Any, args: tuple[Any, ...], out: Path, settings: dict[str, Any], input_names: list[str],
                  output_names: list[str]) -> None:
    import warnings

    import torch

    dynamic_axes = {name: {int(axis): label for axis, label in axes.items()}
                    for name, axes in settings.get("dynamic_axes", {}).items()} or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(module, args, str(out), opset_version=settings["opset"], input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes, dynamo=False,
                              do_constant_folding=True)


def _finish(call: StageCall, out: Path, settings: dict[str, Any]) -> StageResult:
    import onnx

    model = onnx.load(str(out))
    domains = {p["domain"] for p in settings["plugins"]}
    present = {o.domain for o in model.opset_import}
    for domain in sorted(domains - present):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"the exported graph does not pass onnx.checker: {exc}") from exc
    onnx.save(model, str(out))
    info = describe_graph(model)
    (call.out / "export.json").write_text(json.dumps(info, indent=1))
    return StageResult(f"opset {settings['opset']}, {_plugin_summary(info)}", info)


def describe_graph(model: Any) -> dict[str, Any]:
    """Inputs, outputs, plugin nodes and the casts in front of them, from an ONNX model."""
    import onnx

    def tensor(value: Any) -> dict[str, Any]:
        kind = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name
                if kind.elem_type else "unknown", "shape": shape}

    graph = model.graph
    standard = {"", "ai.onnx", "ai.onnx.ml"}
    custom = [n for n in graph.node if n.domain not in standard]
    producers = {o: n for n in graph.node for o in n.output}
    value_types = {v.name: tensor(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    nodes = []
    for node in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        casts = []
        for index, name in enumerate(node.input):
            producer = producers.get(name)
            if producer is not None and producer.op_type == "Cast":
                to = next(a.i for a in producer.attribute if a.name == "to")
                casts.append({"input": index, "to": onnx.helper.tensor_dtype_to_np_dtype(to).name})
        nodes.append({"name": node.name, "op": node.op_type, "domain": node.domain, "attributes": attrs,
                      "inputs": [value_types.get(i, {"name": i}) for i in node.input],
                      "outputs": [value_types.get(o, {"name": o}) for o in node.output], "casts": casts})
    return {"inputs": [tensor(v) for v in graph.input if v.name not in {i.name for i in graph.initializer}],
            "outputs": [tensor(v) for v in graph.output], "plugin_nodes": nodes,
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "node_count": len(graph.node)}


def _plugin_summary(info: dict[str, Any]) -> str:
    nodes = info["plugin_nodes"]
    ops = sorted({n["op"] for n in nodes})
    text = f"{len(nodes)} plugin node{'s' if len(nodes) != 1 else ''} {', '.join(ops)}" if nodes else "no plugin node"
    casts = sorted({c["to"] for n in nodes for c in n["casts"]})
    if casts:
        text += f", integer inputs cast to {', '.join(casts)}"
    return text
