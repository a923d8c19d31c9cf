"""Hugging Face checkpoints as teachers (format "hf"): what the API, the engine and the pages
share, torch-free.

A checkpoint is a folder uploaded as a `.zip`: `config.json`, `model.safetensors` (or shards
with `model.safetensors.index.json`) and optionally `tokenizer.json` with its configs. The
engine (`worker.engine.hf_teacher`) builds the architecture `config.json` names with
`transformers`, for the `model_type`s below only, never with remote code and never from a
pickle.

No task of this studio reads text yet (`TEXT_TASKS` is empty), so a run refuses such a teacher
with `text_task_refusal`, which names the tasks there are.
"""

from __future__ import annotations

SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "bert",
    "distilbert",
    "roberta",
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
)
# pickled checkpoints (`torch.save`, `pickle`): loading one could run code
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
CONVERT_HINT = (
    "convert it to safetensors (in Python, where you trust the file: "
    "model.save_pretrained(folder, safe_serialization=True)) and zip the folder again"
)
TEXT_TASKS: frozenset[str] = frozenset(  # the catalog tasks that read token ids
    {"causal_lm", "text_classification", "sentence_embedding"}
)


def text_task_refusal(model: str, task: str, role: str = "teacher") -> str | None:
    """Why a Hugging Face transformer `model` cannot be the run's `role` (teacher or student)
    for `task` (None when it can)."""
    if task in TEXT_TASKS:
        return None
    from core.catalog.tasks import TASKS

    others = [name for name in TASKS if name not in TEXT_TASKS]
    reads = (
        f"of which {', '.join(sorted(TEXT_TASKS))} read text"
        if TEXT_TASKS
        else "none of which reads text"
    )
    return (
        f"{model} is a Hugging Face transformer (it reads token ids); a Hugging Face transformer "
        f"{role} needs a text task, and this studio's tasks are: {', '.join(others)} (images and "
        f"tables), {reads}. Pick a {role} for task '{task}' (.pt2, .safetensors or .onnx)"
    )
