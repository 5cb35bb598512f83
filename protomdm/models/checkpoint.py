"""One-file checkpoints: ``{"format", "version", "config", "state_dict", "extra"}``, safe to load.

The config is a plain dict (see :class:`~protomdm.config.ModelConfig`) and the file loads with
``torch.load(..., weights_only=True)``: opening a checkpoint never runs code.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..config import ModelConfig, from_dict, to_dict
from ..errors import CheckpointError, ConfigError, UserError
from ..files import atomic_write
from ..registry import Registry
from .base import PrototypeModel
from .registry import check_model_config, create_model

FORMAT = "protomdm-checkpoint"
VERSION = 2  # 2: XProtoNet's `activation` names its similarity (log, as published, or cosine)
READABLE_VERSIONS = (1, 2)
build_model = create_model  # the name the README and older code use

# Other codebases' model files that load_model reads too: (name, detect(path), load(path, device)), registered by
# their integrations (protomdm.integrations.cabrnet: a CaBRNet model directory).
_READERS: Registry[tuple[Callable[[Path], bool], Callable[..., PrototypeModel]]] = Registry("checkpoint format")


def register_checkpoint_reader(name: str, detect: Callable[[Path], bool], load: Callable[..., PrototypeModel]) -> None:
    """Let :func:`load_model` read another format: ``load(path, device)`` for every path where ``detect(path)``."""
    _READERS.add(name, (detect, load), same=lambda entry: entry[1])


def save_checkpoint(model: PrototypeModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (its ``state_dict`` and config) and optional plain ``extra`` data to ``path``."""
    obj = {"format": FORMAT, "version": VERSION, "config": to_dict(model.config),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": extra or {}}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint's raw dict with ``weights_only=True``; one clear error for any bad file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint is not a file: {p}")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"{p}: not a PyTorch checkpoint in torch.save's zip format (truncated, another kind of "
                              "file, or a whole model saved by PyTorch < 1.6, which only --trust-pickle loads)")
    try:
        refs = pickle_globals(p)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, pickle.UnpicklingError) as e:  # corrupt
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__}") from None
    foreign = sorted({g.split(".")[0] for g in refs} - SAFE_MODULES
                     | {"torch.nn" for g in refs if g.startswith("torch.nn.modules.")})
    if foreign:
        raise CheckpointError(
            f"{p}: holds a pickled whole model (classes from {', '.join(foreign)}); unpickling runs code from the file, "
            "so it is refused. If you trust its source, pass --trust-pickle, and --code-dir the repository that "
            "defines those modules")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{p}: holds pickled Python objects (a whole model?), which are not loaded by default because unpickling "
            "runs code; this is not a protomdm checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = str(e).strip().split(". ")[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        kind = "a plain state_dict" if isinstance(ckpt, dict) and ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else f"a {type(ckpt).__name__}"
        raise CheckpointError(f"{p}: not a protomdm checkpoint (found {kind}); make one with `protomdm init-model` "
                              "or save_checkpoint()")
    if ckpt.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{p}: checkpoint version {ckpt.get('version')} is not supported (this protomdm reads "
                              f"versions {', '.join(map(str, READABLE_VERSIONS))})")
    if ckpt["version"] == 1 and isinstance(ckpt.get("config"), dict) and ckpt["config"].get("architecture") == "xprotonet":
        ckpt["config"] = {**ckpt["config"], "activation": "cosine"}  # version 1 XProtoNets were all cosine
    return ckpt


SAFE_MODULES = {"torch", "collections", "builtins", "__builtin__", "copyreg", "_codecs", "numpy"}


def pickle_globals(path: str | Path) -> set[str]:
    """``module.name`` of every class or function a ``torch.save`` file's pickle refers to beyond what
    ``torch.load(..., weights_only=True)`` allows, read without unpickling anything (so without running any of its
    code): ``torch.serialization.get_unsafe_globals_in_checkpoint``."""
    return set(torch.serialization.get_unsafe_globals_in_checkpoint(path))


@contextlib.contextmanager
def code_dir_on_path(code_dir: str | Path | None) -> Iterator[None]:
    """Put ``code_dir`` first on ``sys.path`` for the duration of the block only."""
    if code_dir is None:
        yield
        return
    d = str(Path(code_dir).resolve())
    sys.path.insert(0, d)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(d)


def load_pickled_model(path: str | Path, code_dir: str | Path | None = None,
                       device: str | torch.device = "cpu") -> torch.nn.Module:
    """Unpickle a whole model saved with ``torch.save(model, path)`` (e.g. by the original ProtoPNet code).

    This runs code from the file: call it only for files you trust. ``code_dir`` (the repository that defines the
    pickled classes) is importable during the load only.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if code_dir is not None and not Path(code_dir).is_dir():
        raise CheckpointError(f"`code_dir` {code_dir} is not a folder")
    try:
        with code_dir_on_path(code_dir):
            obj = torch.load(p, map_location=device, weights_only=False)
    except ModuleNotFoundError as e:
        where = f"in --code-dir {code_dir}" if code_dir else "on the import path; pass --code-dir (their repository)"
        raise CheckpointError(f"{p}: the pickled model needs module {e.name!r}, not found {where}") from None
    except (AttributeError, ImportError) as e:
        raise CheckpointError(f"{p}: the pickled model's code does not match `code_dir`: {str(e)[:200]}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a readable pickled model: {str(e).splitlines()[0][:160]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), torch.nn.Module):
        obj = obj["model"]
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        obj = obj.module
    if not isinstance(obj, torch.nn.Module):
        raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a whole model")
    return obj.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu", architecture: str | None = None) -> PrototypeModel:
    """Rebuild a model from a protomdm checkpoint, in eval mode on ``device``; see :func:`load_model_and_extra`."""
    return load_model_and_extra(path, device, architecture)[0]


def load_model_and_extra(path: str | Path, device: str | torch.device = "cpu", architecture: str | None = None
                         ) -> tuple[PrototypeModel, dict[str, Any]]:
    """Rebuild a model from a protomdm checkpoint, in eval mode on ``device``, with the checkpoint's ``extra``
    (push records, training state...), reading the file once.

    Args:
        path: the checkpoint file.
        device: where to put the model.
        architecture: if given (a registered name: ``"protopnet"``, ``"xprotonet"``...), refuse a checkpoint of
            another kind.

    Raises:
        CheckpointError: missing, truncated, foreign or wrong-kind file.
    """
    for detect, load in map(_READERS.__getitem__, _READERS):
        if detect(Path(path)):
            model = load(path, device)
            if architecture is not None and model.config.architecture != architecture:
                raise CheckpointError(f"{path}: this is a {model.config.architecture} model, not {architecture}")
            return model, {}
    ckpt = read_checkpoint(path)
    config, extra = _checked_layout(ckpt, path)
    if architecture is not None and config.architecture != architecture:
        raise CheckpointError(f"{path}: this is a {config.architecture} checkpoint, not {architecture}")
    model = build_model(config)  # its sizes are bounded by ModelConfig
    _check_weights(model, ckpt["state_dict"], path)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the {config.architecture}/{config.backbone} model: "
                              f"{str(e).splitlines()[0][:200]}") from None
    if "push" in extra:
        extra = {**extra, "push": checked_push_records(extra["push"], config, path)}
    return model.to(device).eval(), extra


def _checked_layout(ckpt: dict[str, Any], path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The checkpoint's model config and ``extra``, checked for type and size before anything is built."""
    config, extra, weights = ckpt.get("config"), ckpt.get("extra", {}), ckpt.get("state_dict")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its model config is {'missing' if config is None else 'not a mapping'}; "
                              "not a checkpoint protomdm wrote")
    if "class_names" not in config:
        raise CheckpointError(f"{path}: its config names no classes (class_names), so its outputs cannot be named")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: its extra data is a {type(extra).__name__}, not a mapping")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: its weights (state_dict) are not a mapping of tensors")
    try:
        model_config = from_dict(ModelConfig, {**config, "pretrained": False}, where="checkpoint config")
        check_model_config(model_config)
        return model_config, extra
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid model config in checkpoint: {e}") from None


def _check_weights(model: PrototypeModel, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights whose shapes are not those of the config's ``model`` or that are not finite numbers, before
    they are loaded. (Not on the meta device: initialising weights there imports TorchDynamo, 1.8 s.)"""
    config = model.config
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in expected.items():
        if k in weights and tuple(weights[k].shape) != shape:
            raise CheckpointError(f"{path}: weights do not fit the {config.architecture}/{config.backbone} model: "
                                  f"{k} is {tuple(weights[k].shape)}, the config's model needs {shape}")
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({bad[0]}"
                              f"{', ...' if len(bad) > 1 else ''}): a diverged training run; use an earlier checkpoint")


MAX_THUMBNAIL_SIDE = 1024
_BOXES = ("activation_box", "receptive_field_box")


def _record_problem(rec: Any, config: ModelConfig) -> str | None:
    """Why a push record does not fit the schema that :func:`protomdm.training.push.push_prototypes` writes, or None."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    def integer(v: Any, lo: int, hi: float) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi

    if not isinstance(rec, dict):
        return f"a {type(rec).__name__}, not a mapping"
    n_proto = len(config.class_names) * config.prototypes_per_class
    if not integer(rec.get("prototype"), 0, n_proto):
        return f"prototype {rec.get('prototype')!r} is not 0 .. {n_proto - 1}"
    if not integer(rec.get("class_index"), 0, len(config.class_names)):
        return f"class_index {rec.get('class_index')!r} is not a class"
    if rec.get("image") is not None and not integer(rec["image"], 0, float("inf")):
        return f"image {rec['image']!r} is not an index"
    for k in ("distance", "similarity"):
        if k in rec and not number(rec[k]):
            return f"{k} {rec[k]!r} is not a finite number"
    for k in _BOXES:
        if rec.get(k) is not None and not (isinstance(rec[k], (list, tuple)) and len(rec[k]) == 4
                                           and all(number(v) for v in rec[k])):
            return f"{k} is not four numbers"
    if "patch" in rec and not (isinstance(rec["patch"], (list, tuple)) and len(rec["patch"]) == 2
                               and all(integer(v, 0, 1 << 16) for v in rec["patch"])):
        return "patch is not two cell indices"
    for k in ("source", "dataset"):
        if k in rec and not (isinstance(rec[k], str) and len(rec[k]) <= 1000):
            return f"{k} is not a short text"
    t = rec.get("thumbnail")
    if t is not None and not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 3
                              and t.shape[0] in (1, 3) and 1 <= min(t.shape[1:]) <= max(t.shape[1:])
                              <= MAX_THUMBNAIL_SIDE):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        return f"thumbnail {shape} is not a (1 or 3, h, w) uint8 image of at most {MAX_THUMBNAIL_SIDE} pixels a side"
    return None


def checked_push_records(records: Any, config: ModelConfig, path: str | Path) -> list[dict[str, Any]]:
    """The push records of a checkpoint that fit the schema; the others are left out, and said in one warning (the
    model still loads: provenance is what the gallery and case reports show, not what the model computes)."""
    if not isinstance(records, list):
        warnings.warn(f"{path}: its push records are a {type(records).__name__}, not a list; ignored", stacklevel=3)
        return []
    problems = [(i, _record_problem(r, config)) for i, r in enumerate(records)]
    bad = [(i, why) for i, why in problems if why]
    if bad:
        i, why = bad[0]
        warnings.warn(f"{path}: {len(bad)} of {len(records)} push records are malformed and ignored (record {i}: "
                      f"{why})", stacklevel=3)
    return [r for (i, why), r in zip(problems, records) if not why]


def init_model(out: str | Path, architecture: str, backbone: str, classes: list[str], prototypes_per_class: int = 10,
               img_size: int = 224, prototype_dim: int | None = None, in_channels: int = 3, pretrained: bool = False,
               overwrite: bool = False, seed: int = 0) -> Path:
    """Write an untrained checkpoint (random weights, or a pretrained backbone if asked)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass `overwrite` to replace it")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the checkpoint file to write")
    grey = in_channels == 1
    cfg = ModelConfig(architecture=architecture, backbone=backbone, class_names=tuple(classes),
                      prototypes_per_class=prototypes_per_class,
                      prototype_dim=prototype_dim or 128,
                      img_size=(img_size, img_size), in_channels=in_channels,
                      mean=(0.5,) if grey else (0.485, 0.456, 0.406), std=(0.25,) if grey else (0.229, 0.224, 0.225),
                      pretrained=pretrained)
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.config.pretrained = False  # the weights now live in the checkpoint
    try:
        return save_checkpoint(model, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
