"""torch's `IterableDataset`, `DataLoader` and `Tensor`, and a dataset base class that imports torch late.

`import fastwds` never imports torch. `from fastwds.pytorch import IterableDataset` (the names webdataset's
`pytorch` module has) imports it at that point, and gives stand-in classes when torch is not installed.

`LazyIterableDataset` is the base of fastwds's datasets: an instance is a `torch.utils.data.IterableDataset`
when torch is installed (torch is imported when the first dataset is created, not at `import fastwds`) and a
plain iterable otherwise. It works by giving each instance a class that adds torch's base to the declared
one; the class keeps the declared class's name, `isinstance` works with both, and instances pickle and copy
as instances of the declared class.
"""

from __future__ import annotations

import types
from typing import Any

# IterableDataset, DataLoader and TorchTensor are module attributes resolved on first access (__getattr__).
__all__ = ["LazyIterableDataset", "concrete_class", "torch_iterable_dataset"]


def torch_iterable_dataset() -> type | None:
    """Return `torch.utils.data.IterableDataset`, or None when torch is not installed (imports torch)."""
    from .utils import iterable_dataset_base

    base = iterable_dataset_base()
    return None if base is object else base


# (declared class, has __len__) -> the class instances really get.
_concrete: dict[tuple[type, bool], type] = {}


def _length(self: Any) -> int:
    return self.size


def concrete_class(cls: type, sized: bool = False) -> type:
    """Return the class instances of `cls` get: `cls` plus torch's IterableDataset (when installed) and,
    with `sized`, a `__len__` returning `self.size`."""
    cls = cls.__dict__.get("_fastwds_declared", cls)
    key = (cls, sized)
    found = _concrete.get(key)
    if found is not None:
        return found
    bases: tuple[type, ...] = (cls,)
    torch_base = torch_iterable_dataset()
    if torch_base is not None and not issubclass(cls, torch_base):
        bases = (cls, torch_base)
    if len(bases) == 1 and not sized:
        result = cls
    else:
        namespace: dict[str, Any] = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "_fastwds_declared": cls,
            "_fastwds_sized": sized,
        }
        if sized:
            namespace["__len__"] = _length
        result = types.new_class(cls.__name__, bases, exec_body=lambda ns: ns.update(namespace))
    _concrete[key] = result
    return result


def _rebuild(cls: type, sized: bool) -> Any:
    """Unpickling helper: a bare instance of `cls` with the torch base (and length) of this process."""
    return object.__new__(concrete_class(cls, sized))


class LazyIterableDataset:
    """Base class of fastwds datasets: a torch `IterableDataset` when torch is installed, else a plain iterable.

    Subclasses define `__iter__`.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(concrete_class(cls))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # Pickle (and copy) as the declared class: the combined class is made anew in the receiving process.
        cls = type(self)
        declared = cls.__dict__.get("_fastwds_declared", cls)
        sized = bool(cls.__dict__.get("_fastwds_sized", False))
        getstate = getattr(self, "__getstate__", None)
        state = getstate() if getstate is not None else self.__dict__
        return (_rebuild, (declared, sized), state)

    def _set_sized(self) -> None:
        """Give this instance a `__len__` returning `self.size`."""
        self.__class__ = concrete_class(type(self), sized=True)


class _MissingIterableDataset:
    """Stand-in for `torch.utils.data.IterableDataset` when torch is not installed."""


class _MissingDataLoader:
    """Stand-in for `torch.utils.data.DataLoader` when torch is not installed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ModuleNotFoundError("DataLoader needs torch: pip install torch")


class _MissingTensor:
    """Stand-in for `torch.Tensor` when torch is not installed."""


def __getattr__(name: str) -> Any:
    # webdataset's pytorch module exports these three; they import torch only when asked for.
    if name in ("IterableDataset", "DataLoader"):
        try:
            import torch.utils.data as tud
        except ModuleNotFoundError:
            return _MissingIterableDataset if name == "IterableDataset" else _MissingDataLoader
        return getattr(tud, name)
    if name == "TorchTensor":
        try:
            import torch
        except ModuleNotFoundError:
            return _MissingTensor
        return torch.Tensor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
