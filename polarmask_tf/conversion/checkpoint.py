"""Reading an original PolarMask `.pth` file safely: tensors and plain containers, nothing executed.

The released files are mmcv `save_checkpoint` dicts {"meta", "state_dict"[, "optimizer"]} written by
torch 1.1-1.3 in the legacy (pre-1.6, non-zip) format; newer tools write the zip format. Both are
read with `torch.load(weights_only=True, map_location="cpu")`, whose unpickler accepts tensors,
numbers, strings and containers only, so a file whose pickle would call anything else (os.system,
an arbitrary class) is refused before any of it runs. A bare state dict (a mapping of names to
tensors) is accepted too.
"""

import io

import numpy as np

from polarmask_tf.conversion import ConversionError

TORCH_REQUIREMENT = "torch==2.13.0"
"""The tested PyTorch (the `convert` extra); unpinned, pip may fetch a multi-GB CUDA build."""


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ConversionError(
            f"reading .pth checkpoints needs PyTorch: pip install -e '.[convert]' (installs {TORCH_REQUIREMENT}, "
            "CPU is enough)"
        ) from error
    return torch


def read_checkpoint(path):
    """(state_dict, meta) of a `.pth` file.

    state_dict: {name: numpy array} in the file's order, float32 for floating tensors (the original
    saved float32 throughout) and int64 for integer buffers (num_batches_tracked), with a leading
    "module." (a DataParallel wrapper) stripped. meta: the file's "meta" dict ({} when absent).
    Raises ConversionError naming the file when it is missing, is not a torch file, holds anything
    but tensors and plain containers, or has no state dict.
    """
    torch = _torch()
    from polarmask_tf import fileio

    if not fileio.is_file(path):
        raise ConversionError(f"{path}: no such file")
    source = io.BytesIO(fileio.read_bytes(path)) if fileio.is_remote(path) else path
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"{path} cannot be read as a PyTorch checkpoint of tensors and plain containers "
            f"({type(error).__name__}: {reason}); only weights are loaded, never code"
        ) from None
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path}: expected a dict (a checkpoint or a state dict), found {type(loaded).__name__}")
    if "state_dict" in loaded:
        state, meta = loaded["state_dict"], loaded.get("meta") or {}
    else:
        state, meta = loaded, {}
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{path}: its state_dict is empty or not a mapping of names to tensors")
    if not isinstance(meta, dict):
        raise ConversionError(f"{path}: meta is a {type(meta).__name__}, expected a dict")
    arrays = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"{path}: state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor")
        key = name[len("module."):] if name.startswith("module.") else name
        if key in arrays:
            raise ConversionError(f"{path}: {key!r} appears twice (with and without the 'module.' prefix)")
        value = tensor.detach().cpu()
        arrays[key] = value.float().numpy() if value.is_floating_point() else value.numpy().astype(np.int64)
    return arrays, meta
