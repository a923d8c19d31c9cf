"""What every task's dataset readers share: the error a user sees, bounded decoding and inputs.

- `DatasetError`: an upload that cannot be used, with what is wrong and how to fix it;
- bounded reading, whatever the compression: a zip's entries checked against path traversal,
  symlinks and zip bombs (`check_zip_entries`), the decoded size worked out from headers and
  refused over a limit before anything is decoded (`check_decoded`, `Limits`; a studio server
  passes DS_MAX_DECODED_MB), a .npy member's shape and dtype read from its header
  (`npy_header`), a CSV's lines counted without parsing it (`csv_lines`), an image's size and
  mode read from its header and held to MAX_IMAGE_PIXELS (`image_header`), what decoding a set
  of images takes (`check_images_decoded`), then one image decoded at a time (`decode_image`);
- arrays as float32 a batch of rows at a time into one preallocated array (`float32_rows`), and
  images as NCHW (`to_nchw`);
- `Normalizer` / `NormalizedModel`: standardised inputs *inside* a student, so every artifact
  exported from it still takes the raw inputs its teacher takes.

Nothing here knows what a sample's target is: each task's own readers (e.g. the classification
task's `tasks/classification/data.py`) build on these.
"""

from __future__ import annotations

import math
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

GiB = 1 << 30
MiB = 1 << 20
DECODED_SETTING = "DS_MAX_DECODED_MB"  # the studio setting that sets max_decoded_bytes
_BATCH_BYTES = 16 * MiB  # float32 conversion works on this much at a time
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # per image; PIL's own Image.MAX_IMAGE_PIXELS is held to it
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}
_UNREADABLE_IMAGE = (OSError, EOFError, ValueError, SyntaxError, zipfile.BadZipFile, zlib.error)


class DatasetError(ValueError):
    """A dataset upload that cannot be used; the message says what is wrong and how to fix it."""


class Archive(Protocol):
    """What image reading needs of an upload's archive: a member opened by name for reading
    (a `zipfile.ZipFile`, or a tar read in place, `worker.engine.tars.TarIndex`)."""

    def open(self, name: str) -> IO[bytes]: ...


def to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """2D stays tabular; [N,H,W] gains a channel; NHWC (last dim 1/3/4, dim 1 not) -> NCHW.
    A view: nothing is copied here."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return x.transpose(0, 3, 1, 2)
        return x
    raise DatasetError(
        f"{where}: x has shape {x.shape}; expected [N, D] (tabular), [N, H, W], [N, C, H, W] "
        "or [N, H, W, C] (images)"
    )


def check_zip_entries(zf: zipfile.ZipFile, where: str, max_entries: int, max_bytes: int) -> None:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise DatasetError(
            f"{where}: {len(infos)} entries, more than the limit of {max_entries}; "
            "split the upload or use an .npz file"
        )
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise DatasetError(
            f"{where}: unpacks to {total / GiB:.2f} GiB, more than the limit of "
            f"{max_bytes / GiB:.2f} GiB (a zip bomb or a too-large dataset); upload a smaller one"
        )
    for info in infos:
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise DatasetError(
                f"{where}: entry '{name}' has an absolute path; zip relative paths only"
            )
        if ".." in path.parts:
            raise DatasetError(
                f"{where}: entry '{name}' contains '..'; zip without parent references"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"{where}: entry '{name}' is a symbolic link; zip plain files only")


def size_text(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.2f} MiB"


def check_decoded(where: str, decoded: int, detail: str, limit: int | None, fix: str) -> None:
    """Refuse an upload whose decoded size (read from headers) is over `limit` bytes."""
    if limit is not None and decoded > limit:
        raise DatasetError(
            f"{where}: decodes to {size_text(decoded)} ({detail}), more than the limit of "
            f"{size_text(limit)}; {fix}, or raise {DECODED_SETTING} on the server"
        )


@dataclass(frozen=True)
class Limits:
    entries: int
    unpacked: int
    decoded: int | None


def float32_rows(x: np.ndarray, where: str, compact: bool) -> np.ndarray:
    """x ([N, ...], NCHW already) as float32, converted a batch of rows at a time into one
    preallocated array (uint8 / 255); with `compact`, uint8 stays uint8. NaN/inf are refused."""
    if compact and x.dtype == np.uint8:
        return x
    if x.dtype == np.float32 and x.flags.c_contiguous:
        out = x
    else:
        out = np.empty(x.shape, np.float32)
    row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * 4)
    step = max(1, _BATCH_BYTES // row)
    for i in range(0, x.shape[0], step):
        part = out[i : i + step]
        if x.dtype == np.uint8:
            np.divide(x[i : i + step], 255.0, out=part, dtype=np.float32)
            continue
        if out is not x:
            part[...] = x[i : i + step]
        if not np.isfinite(part).all():
            raise DatasetError(
                f"{where}: x contains NaN or infinite values; clean or impute them first"
            )
    return out


@dataclass(frozen=True)
class NpyHeader:
    member: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    nbytes: int  # what the header claims
    held: int  # the data bytes the member really holds (its declared size less the header)


def npy_header(zf: zipfile.ZipFile, member: str, key: str, where: str) -> NpyHeader:
    """Shape and dtype from a member's .npy header, checked against the bytes it really holds."""
    info = zf.getinfo(member)
    fmt = np.lib.format
    try:
        with zf.open(info) as fp:
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fp.tell()
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(
            f"{where}: '{key}' is not a readable .npy array ({exc}); save with numpy.savez"
        ) from exc
    if dtype.hasobject:
        raise DatasetError(
            f"{where}: '{key}' holds Python objects; store plain numeric arrays (no objects)"
        )
    return NpyHeader(
        member, tuple(shape), dtype, math.prod(shape) * dtype.itemsize, info.file_size - offset
    )


def read_npy(zf: zipfile.ZipFile, header: NpyHeader, where: str) -> np.ndarray:
    try:
        with zf.open(header.member) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{where}: {exc}; store plain numeric arrays (no objects)") from exc


def csv_lines(path: Path) -> tuple[int, int, int]:
    """(lines, the longest line's length in bytes, its 1-based number), reading the file in
    1 MiB blocks; a line ends at LF, CRLF or a lone CR, as pandas reads it."""
    lines, longest, longest_at, last_end, offset = 0, 0, 0, -1, 0
    with path.open("rb") as f:
        block = f.read(MiB)
        while block:
            following = f.read(MiB)
            b = np.frombuffer(block, np.uint8)
            lf = b == 10
            lf_next = np.empty_like(lf)
            lf_next[:-1] = lf[1:]
            lf_next[-1] = following[:1] == b"\n"
            ends = np.flatnonzero(lf | ((b == 13) & ~lf_next)) + offset
            if len(ends):
                lengths = np.diff(ends, prepend=last_end) - 1
                k = int(lengths.argmax())
                if lengths[k] > longest:
                    longest, longest_at = int(lengths[k]), lines + k + 1
                lines, last_end = lines + len(ends), int(ends[-1])
            offset += len(block)
            block = following
    if offset - 1 > last_end:  # a last line without a line end
        lines += 1
        if offset - 1 - last_end > longest:
            longest, longest_at = offset - 1 - last_end, lines
    return lines, longest, longest_at


def csv_row_starts(path: Path) -> np.ndarray:
    """Where each data row of a CSV starts (each line that is not blank, after the header), then
    the file's size: int64 [rows + 1], read in 1 MiB blocks; line ends as `csv_lines`'."""
    found: list[np.ndarray] = []
    offset, after_end = 0, True  # the first line starts at 0
    with path.open("rb") as f:
        block = f.read(MiB)
        while block:
            following = f.read(MiB)
            b = np.frombuffer(block, np.uint8)
            lf = b == 10
            lf_next = np.empty_like(lf)
            lf_next[:-1] = lf[1:]
            lf_next[-1] = following[:1] == b"\n"
            ends = lf | ((b == 13) & ~lf_next)
            begins = np.empty_like(ends)
            begins[0], begins[1:] = after_end, ends[:-1]
            at = np.flatnonzero(begins)
            found.append(at[(b[at] != 10) & (b[at] != 13)] + offset)
            after_end = bool(ends[-1])
            offset += len(block)
            block = following
    starts = np.concatenate([*found, np.zeros(0, np.int64)]).astype(np.int64)
    return np.append(starts[1:], np.int64(offset))


class Normalizer(nn.Module):
    """y = (x - mean) / std per channel (images [N,C,...]) or per feature (tabular [N,D]).

    Statistics come from the training split (`Normalizer.fit`); std below `eps` counts as 1 so
    constant channels pass through. Stored as buffers: saved with the model and exported.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-6) -> Normalizer:
        dims = [0, *range(2, x.dim())]
        mean = x.float().mean(dim=dims)
        std = x.float().std(dim=dims, unbiased=False)
        std = torch.where(std < eps, torch.ones_like(std), std)
        view = (-1,) + (1,) * (x.dim() - 2)
        return cls(mean.reshape(view), std.reshape(view))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """`model(normalizer(x))`: a student that takes raw inputs and standardises them itself."""

    def __init__(self, normalizer: Normalizer, model: nn.Module) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalizer(x))


# ----------------------------------------------------------------------------------------------
# images: sizes from their headers first, then decoded one at a time


def pixel_cap() -> int:
    """Pixels one image may have: MAX_IMAGE_PIXELS, or PIL's own cap if lower. PIL's cap is
    lowered to ours too, so PIL itself refuses anything past twice of it when opening."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    return int(Image.MAX_IMAGE_PIXELS)


def open_image(fp: IO[bytes], name: str, where: str) -> Any:
    """Open an image lazily (PIL reads only its header here) and refuse one over the cap."""
    from PIL import Image

    cap = pixel_cap()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{where}: '{name}' is too large to decode ({exc})") from exc
    except _UNREADABLE_IMAGE as exc:
        raise DatasetError(f"{where}: '{name}' is not a readable image ({exc})") from exc
    if img.size[0] * img.size[1] > cap:
        raise DatasetError(
            f"{where}: '{name}' is {img.size[0]}x{img.size[1]} pixels, more than the limit of "
            f"{cap} pixels per image; resize it smaller"
        )
    return img


def image_header(zf: Archive, name: str, where: str) -> tuple[str, tuple[int, int]]:
    """The mode and size of one image from its header, without decoding its pixels."""
    with zf.open(name) as fp, open_image(fp, name, where) as img:
        return img.mode, img.size


def target_mode(mode: str) -> str:
    return "L" if mode in _GREY_MODES else "RGB"


def pil_bytes_per_pixel(mode: str) -> int:
    """What PIL holds per pixel in memory (at most): 1 byte for 8-bit modes, 4 otherwise."""
    return 1 if mode in ("1", "L", "P") else 4


def decoding_bytes(src_mode: str, src: tuple[int, int], mode: str, size: tuple[int, int]) -> int:
    """Memory to decode one image to `mode` at `size`: its pixels as PIL holds them, a converted
    copy when the mode changes, and the resized image with its uint8 array."""
    pixels = src[0] * src[1]
    converted = pixels * pil_bytes_per_pixel(mode) if target_mode(src_mode) != src_mode else 0
    channels = 3 if mode == "RGB" else 1
    return (
        pixels * pil_bytes_per_pixel(src_mode)
        + converted
        + size[0] * size[1] * (pil_bytes_per_pixel(mode) + channels)
    )


def check_images_decoded(
    entries: list[tuple[str, str]],
    headers: list[tuple[str, tuple[int, int]]],
    mode: str,
    size: tuple[int, int],
    where: str,
    limit: int | None,
) -> None:
    """The samples as float32 plus decoding the costliest single image must fit `limit`."""
    channels = 3 if mode == "RGB" else 1
    samples = len(entries) * channels * size[0] * size[1] * 4
    costs = [decoding_bytes(m, s, mode, size) for m, s in headers]
    worst = max(range(len(costs)), key=costs.__getitem__)
    (w, h), name = headers[worst][1], entries[worst][0]
    detail = (
        f"{len(entries)} images of {size[0]}x{size[1]} {mode} as float32: {size_text(samples)}, "
        f"plus {size_text(costs[worst])} to decode '{name}' ({w}x{h} {headers[worst][0]})"
    )
    check_decoded(
        where, samples + costs[worst], detail, limit, "resize the images smaller or upload fewer"
    )


def decode_image(
    zf: Archive, name: str, mode: str, size: tuple[int, int], where: str
) -> np.ndarray:
    """One image as uint8 [H, W] (mode L) or [H, W, 3] (RGB), resized to `size` if needed."""
    from PIL import Image

    with zf.open(name) as fp, open_image(fp, name, where) as opened:
        try:
            img = opened.convert(mode) if opened.mode != mode else opened
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
        except _UNREADABLE_IMAGE as exc:
            raise DatasetError(f"{where}: '{name}' is not a readable image ({exc})") from exc


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic train / validation split of `n` samples that the tasks share:
    round(n * val_fraction) samples (at least 1, at most n - 1) drawn by a permutation seeded
    with `seed` go to validation; both index lists stay in dataset order."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_val = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 else 0
    val_idx = np.sort(np.random.default_rng(seed).permutation(n)[:n_val])
    keep = np.ones(n, dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep), val_idx
