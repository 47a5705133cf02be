"""DATA for an audit: an image folder (one subfolder per class, as torchvision's ImageFolder),
an ``.npz`` (``x``, optionally ``y``) or a Parquet file with an image column (PNG/JPEG bytes).

A source knows its samples' ids, labels and class names up front and reads samples on demand:
one that cannot be read is an error for that sample (``SampleError``), not for the audit.
Sources pickle without their data (a Ray actor reopens DATA on its own machine).
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..images import Preprocess, fit, image_to_input, load_image, relevance_map
from ..render import gray, pillow

#: torchvision's ImageFolder extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Column names tried for a Parquet file's images and labels.
IMAGE_COLUMNS = ("image", "img", "png", "jpeg", "bytes")
LABEL_COLUMNS = ("label", "labels", "y", "target", "class")


class SampleError(InputError):
    """One sample cannot be read or fed to the model; the audit records it and goes on."""


class Source:
    """The samples of DATA: ``ids`` (str), ``labels`` (int, -1 unknown), ``classes`` (names).
    ``read(i)`` gives sample i as the model takes it; ``display(i)`` as RGB floats in [0, 1];
    ``layout`` tells ``relevance_map`` how to draw a sample's relevance."""

    kind = ""
    ids: List[str]
    labels: np.ndarray
    classes: List[str]
    layout = "auto"
    size: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def display(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def read_batch(self, indices: Sequence[int], sample_shape) -> Tuple[np.ndarray, List[str]]:
        """(x (n, *sample_shape) float32, one error message per sample, "" when it was read);
        a sample that failed is zeros in x."""
        x = np.zeros((len(indices), *sample_shape), np.float32)
        errors = []
        for row, index in enumerate(indices):
            try:
                sample = np.asarray(self.read(index), np.float32)
                if sample.shape != tuple(sample_shape):
                    raise SampleError(f"has shape {sample.shape}, the model takes {tuple(sample_shape)}")
                if not np.all(np.isfinite(sample)):
                    raise SampleError("contains NaN or Inf values")
                x[row] = sample
                errors.append("")
            except InputError as exc:
                errors.append(str(exc))
        return x, errors

    def fingerprint(self) -> str:
        """A digest of what the audit reads: kind, ids and labels (resume checks it)."""
        digest = hashlib.sha256(self.kind.encode())
        digest.update("\0".join(self.ids).encode())
        digest.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
        return digest.hexdigest()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}


class FolderSource(Source):
    """An image folder: ``DATA/<class>/<image>``, classes in sorted order (ImageFolder's)."""

    kind = "folder"

    def __init__(self, root: str, input_shape, spec: Preprocess):
        self.root = root
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        self.ids, labels = [], []
        for label, name in enumerate(self.classes):
            for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
                for file in sorted(files):
                    if file.lower().endswith(IMAGE_EXTENSIONS):
                        self.ids.append(os.path.relpath(os.path.join(folder, file), root).replace(os.sep, "/"))
                        labels.append(label)
        if not self.ids:
            raise InputError(f"no images in the folder {root}: DATA needs one subfolder per class holding "
                             f"{', '.join(IMAGE_EXTENSIONS)} files (as torchvision's ImageFolder)")
        self.labels = np.asarray(labels, np.int64)
        pillow()   # a missing Pillow is one clear error, not an error per image
        self.spec, self.fitted = spec, fit(spec, input_shape)
        self.layout, self.size = self.fitted.layout, self.fitted.size

    def _load(self, index):
        try:
            return load_image(os.path.join(self.root, self.ids[index]), self.spec, self.fitted)
        except InputError as exc:
            raise SampleError(str(exc)) from None

    def read(self, index):
        return self._load(index)[0]

    def display(self, index):
        return self._load(index)[1]


class NpzSource(Source):
    """An ``.npz`` with ``x`` (N, *model sample shape) and optionally ``y`` (N,) labels."""

    kind = "npz"

    def __init__(self, path: str, input_shape):
        self.path = path
        data = self._data()
        if "x" not in data.files:
            raise InputError(f"{path}: an audit .npz needs an array 'x' (the inputs), optionally 'y'; it has {data.files}")
        x = data["x"]
        expected = tuple(input_shape[1:])
        if x.ndim != len(expected) + 1 or any(isinstance(w, int) and w > 0 and g != w
                                              for g, w in zip(x.shape[1:], expected)):
            shown = tuple(d if isinstance(d, int) and d > 0 else "?" for d in expected)
            raise InputError(f"{path}: 'x' has shape {x.shape}, the model takes samples of shape {shown}: "
                             f"reshape x to (N, {', '.join(map(str, shown))})")
        if x.dtype.kind not in "fiu":
            raise InputError(f"{path}: 'x' has dtype {x.dtype}; the model takes numbers")
        if len(x) == 0:
            raise InputError(f"{path}: 'x' holds no samples")
        self.ids = [str(i) for i in range(len(x))]
        self.labels = np.full(len(x), -1, np.int64)
        if "y" in data.files:
            y = np.asarray(data["y"]).reshape(-1)
            if len(y) != len(x) or y.dtype.kind not in "iu":
                raise InputError(f"{path}: 'y' must hold one integer label per sample, got {y.dtype} {y.shape}")
            self.labels = y.astype(np.int64)
        self.classes = [str(c) for c in range(int(self.labels.max()) + 1)] if (self.labels >= 0).any() else []

    def _data(self):
        try:
            return np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {self.path} as .npz: {exc}") from None

    @property
    def _x(self):
        if getattr(self, "_cache_x", None) is None:
            self._cache_x = self._data()["x"]
        return self._cache_x

    def read(self, index):
        return self._x[index]

    def display(self, index):
        shown = relevance_map(self._x[index]).astype(np.float64)
        low, high = shown.min(), shown.max()
        return gray(shown, low, high if high > low else low + 1)


class ParquetSource(Source):
    """A Parquet file whose image column holds encoded PNG/JPEG bytes (or structs with a
    ``bytes`` field, as Hugging Face datasets write them); labels from an integer or string
    column when there is one (strings become classes in sorted order)."""

    kind = "parquet"

    def __init__(self, path: str, input_shape, spec: Preprocess, image_column=None, label_column=None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read {path} as Parquet: {exc}") from None
        names = schema.names

        def is_image(field):
            return (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)
                    or (pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0))

        if image_column is None:
            candidates = [n for n in IMAGE_COLUMNS if n in names and is_image(schema.field(n))] or \
                         [n for n in names if is_image(schema.field(n))]
            if not candidates:
                raise InputError(f"{path}: no image column (binary PNG/JPEG bytes) among {names}; name it with --image-column")
            image_column = candidates[0]
        elif image_column not in names or not is_image(schema.field(image_column)):
            raise InputError(f"{path}: column {image_column!r} is not a column of encoded image bytes; columns: {names}")
        if label_column is None:
            label_column = next((n for n in LABEL_COLUMNS if n in names), None)
        elif label_column not in names:
            raise InputError(f"{path}: no label column {label_column!r}; columns: {names}")
        self.image_column, self.label_column = image_column, label_column
        pillow()
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows == 0:
            raise InputError(f"{path} has no rows")
        self.ids = [str(i) for i in range(rows)]
        self.labels, self.classes = np.full(rows, -1, np.int64), []
        if label_column:
            values = pq.read_table(path, columns=[label_column]).column(0).to_pylist()
            if all(isinstance(v, (int, np.integer)) for v in values if v is not None):
                self.labels = np.asarray([-1 if v is None else v for v in values], np.int64)
                self.classes = [str(c) for c in range(int(self.labels.max()) + 1)] if (self.labels >= 0).any() else []
            else:
                self.classes = sorted({str(v) for v in values if v is not None})
                lookup = {c: i for i, c in enumerate(self.classes)}
                self.labels = np.asarray([-1 if v is None else lookup[str(v)] for v in values], np.int64)
        self.spec, self.fitted = spec, fit(spec, input_shape)
        self.layout, self.size = self.fitted.layout, self.fitted.size

    @property
    def _images(self):
        if getattr(self, "_cache_images", None) is None:
            import pyarrow.parquet as pq

            self._cache_images = pq.read_table(self.path, columns=[self.image_column]).column(0).to_pylist()
        return self._cache_images

    def _load(self, index):
        value = self._images[index]
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise SampleError(f"row {index} has no image bytes")
        Image = pillow()
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image_to_input(image, self.spec, self.fitted)
        except (OSError, ValueError) as exc:   # Pillow's UnidentifiedImageError is an OSError
            raise SampleError(f"row {index} is not a readable image ({exc})") from None

    def read(self, index):
        return self._load(index)[0]

    def display(self, index):
        return self._load(index)[1]


def open_source(data, input_shape, spec: Preprocess = Preprocess(), image_column=None, label_column=None) -> Source:
    """The Source of DATA (a folder, an .npz or a .parquet file) for a model input of shape
    ``input_shape`` (batch axis first); a missing, empty or unknown DATA is an InputError."""
    data = os.fspath(data)
    if not os.path.exists(data):
        raise InputError(f"DATA not found: {data}")
    if os.path.isdir(data):
        return FolderSource(data, input_shape, spec)
    lower = data.lower()
    if lower.endswith(".npz"):
        return NpzSource(data, input_shape)
    if lower.endswith((".parquet", ".pq")):
        return ParquetSource(data, input_shape, spec, image_column, label_column)
    raise InputError(f"unknown DATA format: {data}; give an image folder (one subfolder per class), "
                     "an .npz with 'x' (and 'y'), or a .parquet file with an image column")
