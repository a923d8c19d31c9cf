"""A text run's student as a Hugging Face checkpoint: the folder `transformers` loads with
`from_pretrained`, zipped as the run's artifact `student_hf` (student_hf.zip).

The zip holds, at its top:

- config.json and model.safetensors: the student's transformers model (`models.unwrap` of the
  `TokenModel` the run trained) written by `save_pretrained(safe_serialization=True)`, which
  records `architectures`, `model_type` and the student's own sizes, and stores tied weights
  (an LM head tied to the embeddings) once; a classifier's `id2label` / `label2id` name the
  dataset's classes when there are as many as the head's outputs;
- the teacher's tokenizer: tokenizer.json (the teacher zip's own file, else the loaded
  `tokenizers.Tokenizer`'s `to_str()`, the same JSON), with the tokenizer's side files the
  teacher zip has beside its config.json (`TOKENIZER_FILES`: tokenizer_config.json,
  special_tokens_map.json, vocab/merges files, chat template), read from the zip member by
  member under the same name checks as the teacher's loading, never unpacking its weights.

Such a zip is an upload like any other (format "hf"): `hf_teacher.load_hf` reads it back, so
the student can be registered as a model and be the teacher of a later run.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from torch import nn

from worker.engine.tasks.text.models import unwrap

ARTIFACT = "student_hf"
FILENAME = "student_hf.zip"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FILES = frozenset(
    {
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
    }
)
MAX_SIDE_FILE_BYTES = 64 << 20


class HfExportError(ValueError):
    """The student cannot be written as a Hugging Face checkpoint (not a transformers model)."""


def teacher_tokenizer_files(teacher_zip: Path | None) -> dict[str, bytes]:
    """tokenizer.json and the tokenizer side files (`TOKENIZER_FILES`) beside the teacher
    zip's config.json, by name; {} without a zip. Members with unsafe names or over
    `MAX_SIDE_FILE_BYTES` are left out."""
    from worker.engine.hf_teacher import CONFIG, _member_problem

    if teacher_zip is None or not zipfile.is_zipfile(teacher_zip):
        return {}
    with zipfile.ZipFile(teacher_zip) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir() and _member_problem(i) is None]
        roots = sorted(
            i.filename[: -len(CONFIG)]
            for i in infos
            if PurePosixPath(i.filename).name == CONFIG
            and len(PurePosixPath(i.filename).parts) <= 2
        )
        if not roots:
            return {}
        wanted = TOKENIZER_FILES | {TOKENIZER_JSON}
        files = {}
        for info in infos:
            name = info.filename[len(roots[0]) :] if info.filename.startswith(roots[0]) else ""
            if name in wanted and info.file_size <= MAX_SIDE_FILE_BYTES:
                files[name] = zf.read(info)[:MAX_SIDE_FILE_BYTES]
    return files


def _name_classes(config: Any, classes: list[str] | None) -> None:
    """id2label / label2id from the dataset's class names when the head has that many outputs."""
    if not classes or int(getattr(config, "num_labels", 0) or 0) != len(classes):
        return
    config.id2label = dict(enumerate(classes))
    config.label2id = {name: i for i, name in enumerate(classes)}


def write_folder(
    student: nn.Module,
    folder: Path,
    tokenizer: Any = None,
    teacher_zip: Path | None = None,
    classes: list[str] | None = None,
) -> Path:
    """The student's checkpoint folder (module doc) in `folder`; returns it."""
    hf = unwrap(student)
    save = getattr(hf, "save_pretrained", None)
    if not callable(save) or not hasattr(hf, "config"):
        raise HfExportError(
            f"the student ({type(hf).__name__}) is not a transformers model; only a text run's "
            "student is exported as a Hugging Face checkpoint"
        )
    folder.mkdir(parents=True, exist_ok=True)
    _name_classes(hf.config, classes)
    was_training = hf.training
    hf.eval()
    try:
        save(str(folder), safe_serialization=True)
    finally:
        hf.train(was_training)
    side = teacher_tokenizer_files(teacher_zip)
    if TOKENIZER_JSON not in side and tokenizer is not None:
        side[TOKENIZER_JSON] = tokenizer.to_str().encode()
    for name, data in side.items():
        (folder / name).write_bytes(data)
    return folder


def zip_folder(folder: Path, path: Path) -> Path:
    """The folder's files at the top of a zip (weights stored, text compressed)."""
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for file in sorted(folder.iterdir()):
            if file.is_file():
                method = (
                    zipfile.ZIP_STORED if file.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                )
                zf.write(file, file.name, compress_type=method)
    tmp.replace(path)
    return path


def export_hf(
    student: nn.Module,
    out_dir: Path,
    tokenizer: Any = None,
    teacher_zip: Path | None = None,
    classes: list[str] | None = None,
) -> dict[str, str]:
    """Write out_dir/student_hf.zip (module doc); the artifacts written, {kind: file name}."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="ds-hf-export-", dir=out_dir) as tmp:
        folder = write_folder(student, Path(tmp) / ARTIFACT, tokenizer, teacher_zip, classes)
        zip_folder(folder, out_dir / FILENAME)
        shutil.rmtree(folder, ignore_errors=True)
    return {ARTIFACT: FILENAME}
