"""Reading and writing named tensors as .npy files, and describing them in one short line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

DTYPE_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
               "int32": "i32", "int8": "i8", "uint8": "u8", "bool": "bool"}


def describe(name: str, dtype: str, shape: list[int] | tuple[int, ...]) -> str:
    return f"{name} {DTYPE_SHORT.get(dtype, dtype)}[{','.join(str(d) for d in shape)}]"


def save_named(folder: Path, tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Write each array as `<name>.npy`; return {name: {file, dtype, shape}}."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        file = folder / f"{name}.npy"
        np.save(file, array, allow_pickle=False)
        index[name] = {"file": f"{folder.name}/{file.name}", "dtype": str(array.dtype), "shape": list(array.shape)}
    return index


def load_named(root: Path, index: dict[str, dict[str, Any]], mmap: bool = True) -> dict[str, Any]:
    import numpy as np

    return {name: np.load(root / meta["file"], mmap_mode="r" if mmap else None, allow_pickle=False)
            for name, meta in index.items()}


def torch_dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def to_numpy(value: Any) -> Any:
    """A torch tensor or array-like as a NumPy array (bfloat16 widened to float32, which NumPy lacks)."""
    import numpy as np

    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if torch_dtype_name(tensor.dtype) == "bfloat16":
            tensor = tensor.float()
        return tensor.contiguous().numpy()
    return np.asarray(value)


def feeds_for(inputs: Iterable[Any], capture_dir: Path) -> dict[str, Any]:
    """The captured inputs (capture_dir/capture.json) by graph input name, cast to the dtypes the built
    graph takes (`inputs`: its input specs, each with a name and a dtype); verify and bench feed them."""
    import numpy as np

    record = json.loads((capture_dir / "capture.json").read_text())
    tensors = load_named(capture_dir, record["inputs"], mmap=False)
    feeds = {}
    for spec in inputs:
        if spec.name not in tensors:
            raise UserError(f"the graph takes an input '{spec.name}' that the capture does not have "
                            f"(it has {', '.join(tensors)})", field="capture")
        array, wanted = tensors[spec.name], np.dtype(spec.dtype)
        if wanted.kind in "iu" and array.dtype.kind in "iu" and array.size:
            bounds = np.iinfo(wanted)
            if array.min() < bounds.min or array.max() > bounds.max:
                raise UserError(f"input '{spec.name}' holds values in [{array.min()}, {array.max()}], outside "
                                f"the {wanted} the built graph takes", field="capture")
        feeds[spec.name] = np.ascontiguousarray(array, dtype=wanted)
    return feeds
