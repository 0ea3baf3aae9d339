"""Read a ``.pkl`` of case properties without ever running code from it.

``pickle.load`` calls whatever global a pickle names (``os.system``,
``builtins.exec``), so a properties file from the internet could run
anything. :class:`RestrictedUnpickler` resolves only the globals that plain
containers, scalars and numpy arrays, dtypes and scalars need (as numpy 1 and
numpy 2 write them) and refuses every other one before it is imported.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np
import numpy._core.multiarray as _multiarray
import numpy._core.numeric as _numeric

from utils.errors import DataError

#: (module, name) as a pickle names it -> the object it stands for. numpy 1 wrote ``numpy.core.*``,
#: numpy 2 writes ``numpy._core.*``; both resolve to numpy 2's objects without importing the old shim.
#: ``__builtin__`` is how protocols 0-2 name builtins; ``_codecs.encode`` rebuilds bytes there.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _multiarray._reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _multiarray.scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _numeric._frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("_codecs", "encode"): __import__("codecs").encode,
    **{(module, name): getattr(__import__("builtins"), name)
       for module in ("builtins", "__builtin__") for name in ("set", "frozenset", "complex", "bytearray")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`ALLOWED_GLOBALS`; any other global raises DataError.

    ``source`` names the file in the message.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise DataError(
                f"{self.source}: refused to load the global {module}.{name}; a properties pickle may hold only "
                "dicts, lists, numbers, strings and numpy arrays (save the properties as JSON to be safe)"
            )
        return found

    # Persistent ids would hand objects to a hook we do not define; refuse them as plainly.
    def persistent_load(self, pid: Any) -> Any:  # pragma: no cover - exercised only by hand-made pickles
        raise DataError(f"{self.source}: refused a persistent id in the pickle; save the properties as JSON")


def load_restricted(path: Path) -> Any:
    """The object pickled in ``path``, through :class:`RestrictedUnpickler`; a corrupt file raises DataError."""
    loader: Callable[[], Any] = RestrictedUnpickler(io.BytesIO(Path(path).read_bytes()), str(path)).load
    try:
        return loader()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable pickle ({exc}); write the properties again") from exc
