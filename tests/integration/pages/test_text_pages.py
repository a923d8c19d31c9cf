"""Text tasks on the pages: New run maps a transformer student's blocks onto its teacher's
(picked from both models' block tables, or spread evenly) and shows the chosen task's catalog
parameters and the text column; the Datasets page shows a text dataset's kind, rows, sample rows,
class counts and token lengths; the run page draws every validation metric of the run's task and
an LM's continuations of teacher and student side by side; Compare offers the task's metrics."""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import Client
from tests.conftest import WorkerProcess
from tests.hf_helpers import TINY_GPT2, tiny_members, write_zip
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


def _hf_model(api: Client, folder: Path, name: str, layers: int) -> int:
    """A tiny GPT-2 of `layers` blocks uploaded as a checkpoint zip, inspected as the worker
    inspects it (`inspect_hf`)."""
    from worker.engine.hf_teacher import inspect_hf

    path = write_zip(folder / f"{name}.zip", tiny_members({**TINY_GPT2, "n_layer": layers}))
    model = api.upload_model(path, name)
    update("Model", model.id, status="ready", inspection=inspect_hf(path))
    return model.id


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    """The shared seed, a 4-block GPT-2 teacher and a 2-block GPT-2 student model."""
    api = Client(live_api.url, live_api.token)
    studio = _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)
    folder = live_api.env.data_dir
    studio.hf_teacher = _hf_model(api, folder, "gpt2-teacher", 4)  # type: ignore[attr-defined]
    studio.hf_student = _hf_model(api, folder, "gpt2-student", 2)  # type: ignore[attr-defined]
    return studio


def _block_tables(at: Any) -> list[Any]:
    """The block tables on the page (teacher's, then the student's): those with an MLP column."""
    return [f.value for f in at.dataframe if "mlp" in f.value.columns]


def test_new_run_maps_student_blocks_onto_teacher_blocks(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_teacher").set_value(studio.hf_teacher).run()  # type: ignore[attr-defined]
    assert not at.exception, [e.value for e in at.exception]
    assert "**Layer mapping by blocks**" in texts(at.markdown)
    teacher = _block_tables(at)[0]
    assert list(teacher["path"]) == [f"transformer.h.{i}" for i in range(4)]
    assert list(teacher["attention"]) == [f"transformer.h.{i}.attn" for i in range(4)]
    assert "Plan to see the student's blocks" in texts(at.info)

    at.radio(key="nr_student_source").set_value("model").run()
    at.selectbox(key="nr_student_model").set_value(studio.hf_student).run()  # type: ignore[attr-defined]
    assert not at.exception, [e.value for e in at.exception]
    student = _block_tables(at)[1]
    assert list(student["path"]) == ["transformer.h.0", "transformer.h.1"]
    at.button(key="nr_blocks_even").click().run()
    assert not at.exception, [e.value for e in at.exception]
    pairs = [(p["student"], p["teacher"]) for p in at.session_state["nr_pairs"]]
    assert pairs == [("transformer.h.0", "transformer.h.1"), ("transformer.h.1", "transformer.h.3")]
    review = texts(at.code)
    assert "teacher: transformer.h.1" in review and "student: transformer.h.0" in review


def test_new_run_shows_the_task_params_text_column_text_students_and_lm_losses(
    studio: Studio,
) -> None:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_teacher").set_value(studio.hf_teacher).run()  # type: ignore[attr-defined]
    at.selectbox(key="nr_task").set_value("classification").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [w for w in at.number_input if str(w.key).startswith("nr_tp.")]  # image task:
    assert "nr_text_column" not in {w.key for w in at.text_input}  # the form as it was
    assert "max_length" not in texts(at.code)

    at.selectbox(key="nr_task").set_value("causal_lm").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="nr_tp.causal_lm.max_length").value == 128
    at.number_input(key="nr_tp.causal_lm.max_length").set_value(64).run()
    at.text_input(key="nr_text_column").set_value("body").run()
    students = at.selectbox(key="nr_student").options
    assert any(o.endswith("(hf_layers)") for o in students)
    assert any(o.endswith("(hf_config)") for o in students)
    assert not any(o.endswith("(resnet8)") for o in students)
    at.selectbox(key="nr_student").set_value("hf_config").run()
    size = at.selectbox(key="nr_student.hf_config.size")
    assert size.options == ["none", "tiny", "mini", "small", "medium"]
    size.set_value("tiny").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "size: tiny" in texts(at.code) or '"size": "tiny"' in texts(at.code)
    at.selectbox(key="nr_student").set_value("hf_layers").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(str(w.key).startswith("nr_student.hf_layers.") for w in at.number_input)
    losses = at.multiselect(key="nr_losses")
    for name in ("kd", "reverse_kl", "gkd_jsd", "skew_kl", "tvd"):
        assert any(o.endswith(f"({name})") for o in losses.options), name
    assert not any(o.endswith("(at)") for o in losses.options)
    losses.set_value(["ce", "gkd_jsd"]).run()
    assert not at.exception, [e.value for e in at.exception]
    review = texts(at.code)
    assert "task: causal_lm" in review or '"task": "causal_lm"' in review
    assert "max_length: 64" in review or '"max_length": 64' in review
    assert "text_column: body" in review or '"text_column": "body"' in review
    assert "architecture: hf_layers" in review or '"architecture": "hf_layers"' in review
    at.selectbox(key="nr_scheme").set_value("on_policy").run()  # GKD's on-policy fraction
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="nr_scheme.on_policy.lmbda").value == 0.5
    at.number_input(key="nr_scheme.on_policy.lmbda").set_value(0.25).run()
    review = texts(at.code)
    assert "lmbda: 0.25" in review or '"lmbda": 0.25' in review

    at.text_area(key="nr_yaml").set_value(
        "name: pasted\ntask: causal_lm\ntask_params: {max_length: 32}\n"
        f"teacher: {{model_id: {studio.hf_teacher}}}\n"  # type: ignore[attr-defined]
        f"dataset: {{dataset_id: {studio.dataset_id}, text_column: story}}\n"
        "student: {architecture: hf_layers}\nlosses: [{name: kd}]\n"
    ).run()
    at.button(key="nr_yaml_load").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="nr_tp.causal_lm.max_length").value == 32
    assert at.text_input(key="nr_text_column").value == "story"


def test_new_run_says_what_a_student_with_its_own_tokenizer_means(studio: Studio) -> None:
    """Two BERT encoders with tokenizers of 40 and 60 words: for sentence embeddings the page
    says the student reads each batch re-tokenised (embedding losses only); for a task that
    compares tokens it warns that the run would be refused."""
    from tests.hf_helpers import TINY_BERT
    from tests.text_helpers import word_tokenizer
    from worker.engine.hf_teacher import inspect_hf

    api = Client(studio.url, studio.token)
    ids = []
    for name, words in (("bert-40", 40), ("bert-60", 60)):
        tok = word_tokenizer([" ".join(f"w{i}" for i in range(words))])
        members = {**tiny_members(TINY_BERT), "tokenizer.json": tok.to_str().encode()}
        path = write_zip(studio.env.data_dir / f"{name}.zip", members)
        model = api.upload_model(path, name)
        update("Model", model.id, status="ready", inspection=inspect_hf(path))
        ids.append(model.id)
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_teacher").set_value(ids[0]).run()
    at.selectbox(key="nr_task").set_value("sentence_embedding").run()
    at.radio(key="nr_student_source").set_value("model").run()
    at.selectbox(key="nr_student_model").set_value(ids[1]).run()
    assert not at.exception, [e.value for e in at.exception]
    note = texts(at.info)
    assert "tokenizer of its own (64 tokens against the teacher's 44)" in note
    assert "re-tokenised" in note
    at.selectbox(key="nr_task").set_value("text_classification").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "the run would be refused" in texts(at.warning)


LM_SUMMARY = {  # what CausalLMTask.evaluate reports (its samples go to predictions.json)
    "teacher_perplexity": 21.5,
    "student_perplexity": 34.25,
    "next_token_agreement": 0.62,
    "teacher_tokens_per_s": 410.0,
    "student_tokens_per_s": 980.0,
    "teacher_params": 160_000,
    "student_params": 60_000,
    "teacher_cache": {
        "used": True,
        "top_k": 32,
        "size_bytes": 40_960,
        "replayed_batches": 6,
        "recorded_batches": 0,
        "teacher_loaded": "no",
    },  # fmt: skip
}
LM_SAMPLES = [
    {
        "index": 0,
        "mime": "text/plain",
        "prompt": "The quick brown fox",
        "reference": " jumps over the lazy dog.",
        "teacher": " jumps over the lazy dog",
        "student": " jumps over the dog",
        "epochs": [
            {"epoch": 0, "student": " the the the"},
            {"epoch": 1, "student": " jumps over the dog"},
        ],
    },
    {
        "index": 1,
        "mime": "text/plain",
        "prompt": "Once upon a time",
        "reference": " there was a king.",
        "teacher": " there was a king",
        "student": " there was",
        "epochs": [],
    },
]


def _lm_run(api: Client, studio: Studio, name: str, perplexity: list[float]) -> int:
    """A finished causal-LM run as the worker leaves it: its config (task causal_lm), the
    validation perplexity and agreement per epoch, its summary and predictions.json with the
    teacher's and the student's continuations."""
    from core.db import session_scope
    from core.db.tables import Artifact, Metric, Run
    from core.storage import get_store

    run = api.create_run(
        {
            "name": name,
            "teacher": {"model_id": studio.teacher_id},
            "student": {"architecture": "resnet8", "kwargs": {"width": 0.25}},
            "dataset": {"dataset_id": studio.dataset_id},
            "losses": [{"name": "kd"}],
            "training": {"epochs": len(perplexity), "device": "cpu"},
        }
    )
    config = {**run.config, "task": "causal_lm", "task_params": {"max_length": 64}}
    summary = {**LM_SUMMARY, "student_perplexity": perplexity[-1]}
    with session_scope() as session:
        row = session.get(Run, run.id)
        row.config, row.status, row.progress, row.summary = config, "succeeded", 1.0, summary
        for epoch, value in enumerate(perplexity):
            step = 10 * (epoch + 1)
            for metric, v in (("val/perplexity", value), ("val/agreement", 0.3 + 0.1 * epoch)):
                session.add(Metric(run_id=run.id, name=metric, step=step, epoch=epoch, value=v))
            session.add(Metric(run_id=run.id, name="loss", step=step, epoch=epoch, value=1.0))
        stored = get_store().put_bytes(
            f"teams/{row.team_id}/runs/{run.id}/predictions.json",
            json.dumps(LM_SAMPLES).encode(),
        )
        session.add(
            Artifact(
                team_id=row.team_id,
                run_id=run.id,
                kind="predictions",
                filename="predictions.json",
                storage_key=stored.key,
                size_bytes=stored.size,
                sha256=stored.sha256,
            )
        )
    return run.id


def _chart_names(at: Any) -> list[set[str]]:
    """The series names each vega-lite chart on the page draws."""
    found = []
    for chart in at.get("vega_lite_chart"):
        proto = chart.proto
        datasets = [proto.data] if proto.data.data else []
        datasets += [d.data for d in proto.datasets]
        names: set[str] = set()
        for data in datasets:
            import pyarrow as pa

            table = pa.ipc.open_stream(data.data).read_all()
            if "name" in table.column_names:
                names |= set(table.column("name").to_pylist())
        found.append(names)
    return found


def test_the_run_page_draws_the_task_metrics_and_both_continuations(studio: Studio) -> None:
    api = Client(studio.url, studio.token)
    run_id = _lm_run(api, studio, "lm-kd", [60.0, 34.25])
    at = _app(studio, "run.py", id=run_id)
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m for m in at.metric}
    assert metrics["Student perplexity"].value == "34.25"
    assert metrics["Student perplexity"].delta == "+12.8 vs teacher"  # worse: shown in red
    assert metrics["Next token agreement"].value == "62.00%"
    table = next(f.value for f in at.dataframe if "teacher / student" in f.value.columns)
    rows = {label: i for i, label in enumerate(table[""])}
    assert table["teacher"].iloc[rows["Perplexity"]] == "21.5"
    assert table["student"].iloc[rows["Tokens per s"]] == "980"
    charts = _chart_names(at)
    assert {"val/agreement"} in charts and {"val/perplexity"} in charts  # apart: other scales
    assert "**Teacher and student on validation samples**" in texts(at.markdown)
    shown = texts(at.text)
    assert "The quick brown fox" in shown
    assert "jumps over the lazy dog\njumps over the dog" in shown  # teacher | student
    assert "**The student after each epoch**" in texts(at.markdown)
    by_epoch = at.table[0].value
    assert list(by_epoch["epoch"]) == [1, 2]
    assert list(by_epoch["student"]) == [" the the the", " jumps over the dog"]
    assert (
        "Teacher-output cache (top-32 logits, 40 KiB): 6 of 6 training batches replayed without "
        "the teacher; the teacher was not loaded (its figures are those of the run that "
        "recorded it)"
    ) in texts(at.caption)


def test_the_run_page_shows_continuations_while_the_run_trains(studio: Studio) -> None:
    """A causal-LM run in its third epoch: the live panel shows the samples the worker wrote
    after epoch 2 (`live_samples`), the teacher's and the student's continuations side by side
    and the student's after each epoch so far."""
    from core.db import session_scope
    from core.db.tables import Run

    api = Client(studio.url, studio.token)
    run_id = _lm_run(api, studio, "lm-live", [60.0, 40.0])
    sample = {**LM_SAMPLES[0], "student": " jumps over the fox"}  # as after epoch 2 of 3
    sample["epochs"] = [{"epoch": 0, "student": " the the the"}, {"epoch": 1, "student": " jumps over the fox"}]  # fmt: skip
    live = {"epoch": 1, "samples": [sample]}
    with session_scope() as session:
        row = session.get(Run, run_id)
        row.status, row.progress, row.epoch, row.summary = "running", 0.5, 2, {"live_samples": live}
    at = _app(studio, "run.py", id=run_id)
    assert not at.exception, [e.value for e in at.exception]
    (panel,) = [e for e in at.expander if "validation samples" in e.label]
    assert panel.label == "Teacher and student on validation samples after epoch 2"
    shown = texts(panel.text)
    assert "The quick brown fox" in shown
    assert "jumps over the lazy dog\njumps over the fox" in shown  # teacher | student
    assert list(panel.table[0].value["student"]) == [" the the the", " jumps over the fox"]


def test_compare_ranks_text_runs_on_their_task_metrics(studio: Studio) -> None:
    api = Client(studio.url, studio.token)
    better = _lm_run(api, studio, "lm-better", [50.0, 30.0])
    worse = _lm_run(api, studio, "lm-worse", [60.0, 40.0])
    at = _app(studio, "compare.py", runs=f"{better},{worse}")
    assert not at.exception, [e.value for e in at.exception]
    results = next(f for f in at.dataframe if "student perplexity" in f.value.columns)
    assert list(results.value["student perplexity"]) == [30.0, 40.0]
    assert list(results.value["teacher perplexity"]) == [21.5, 21.5]
    at.selectbox(key="cmp_metric").set_value("val/perplexity").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "None of these runs logged" not in texts(at.caption)


REVIEWS = [
    ("a warm and funny film", "pos"),
    ("dull, slow and far too long", "neg"),
    ("the best thing I saw this year", "pos"),
    ("I left before the end", "neg"),
    ("a gentle story told well", "pos"),
    ("it never finds its voice", "pos"),
]


def _word_tokenizer(texts: list[str]) -> Any:
    """A real `tokenizers` word-level tokenizer over the words of `texts`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = sorted({w for t in texts for w in t.replace(",", " ").split()})
    tokenizer = Tokenizer(
        WordLevel({w: i + 1 for i, w in enumerate(words)} | {"[UNK]": 0}, "[UNK]")
    )
    tokenizer.pre_tokenizer = Whitespace()
    return tokenizer


def test_the_datasets_page_shows_a_text_dataset(studio: Studio, tmp_path: Path) -> None:
    """A .jsonl of labelled texts uploaded through the page's client, described as the scan
    describes it (`describe_text`, with a tokenizer: the token length histogram)."""
    from worker.engine.tasks.text.data import describe_text, read_text_dataset

    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in REVIEWS))
    api = Client(studio.url, studio.token)
    dataset = api.upload_dataset(path, "reviews")
    assert dataset.format == "jsonl"
    data = read_text_dataset(path, "classification")
    info = describe_text(data, _word_tokenizer([t for t, _ in REVIEWS]), max_length=5)
    update("Dataset", dataset.id, status="ready", info=info)

    at = _app(studio, "datasets.py")
    at.selectbox(key="ds_selected").set_value(dataset.id).run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Rows"], metrics["Kind"], metrics["Classes"]) == (
        "6",
        "Text classification",
        "2",
    )
    rows = next(f.value for f in at.dataframe if "text" in f.value.columns)
    assert list(rows["text"])[:2] == ["a warm and funny film", "dull, slow and far too long"]
    assert list(rows["label"])[:2] == ["pos", "neg"]
    assert "**Rows per class**" in texts(at.markdown)
    assert "**Token lengths**" in texts(at.markdown)
    note = texts(at.caption)
    assert "Shortest 5, longest 7" in note
    assert "2 rows are longer than the max length 5" in note


@pytest.fixture(scope="module")
def worker(studio: Studio) -> Iterator[WorkerProcess]:
    """A real worker (scans, inspections, token counts); the jobs queued for the seeded rows
    are dropped first: their rows already hold what a worker would have written."""
    from core import jobs

    jobs.producer_app().control.purge()
    proc = WorkerProcess(studio.env, name="text-ui").start()
    yield proc
    proc.stop()


def _ready(read: Any, what: str, timeout: float = 120.0) -> Any:
    """`read()` once its status is ready (a worker scanned or inspected it)."""
    deadline = time.monotonic() + timeout
    while (item := read()).status not in ("ready", "failed"):
        assert time.monotonic() < deadline, f"{what} still {item.status} after {timeout:.0f}s"
        time.sleep(0.2)
    assert item.status == "ready", f"{what}: {item.error}"
    return item


def test_the_datasets_page_counts_tokens_with_a_chosen_teacher(
    studio: Studio, worker: WorkerProcess, tmp_path: Path
) -> None:
    """A .txt corpus scanned by the worker, the tiny GPT-2 teacher (BPE tokenizer) inspected by
    it; on the Datasets page the teacher is chosen and the worker counts each line's tokens."""
    from tokenizers import Tokenizer

    from tests.lm_helpers import lm_demo_files

    demo = lm_demo_files()
    api = Client(studio.url, studio.token)
    uploaded = api.upload_dataset(demo.write_text(tmp_path / "corpus.txt", 40), "corpus")
    dataset = _ready(lambda: api.dataset(uploaded.id), "dataset")
    model = api.upload_model(demo.teacher, "lm-teacher")
    _ready(lambda: api.model(model.id), "model")
    with zipfile.ZipFile(demo.teacher) as zf:
        name = next(n for n in zf.namelist() if n.endswith("tokenizer.json"))
        tokenizer = Tokenizer.from_str(zf.read(name).decode())
    lengths = [len(tokenizer.encode(line).ids) for line in demo.lines(40)]

    at = _app(studio, "datasets.py")
    at.selectbox(key="ds_selected").set_value(dataset.id).run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric}["Kind"] == "Plain text"
    assert "ds_tok_model" in [w.key for w in at.selectbox], texts(at.caption)[-300:]
    at.selectbox(key="ds_tok_model").set_value(model.id).run()
    at.number_input(key="ds_tok_max_length").set_value(16).run()
    at.button(key="ds_tok_count").click().run()
    assert not at.exception, [e.value for e in at.exception]
    note = texts(at.caption)
    over = sum(n > 16 for n in lengths)
    assert f"Shortest {min(lengths)}, longest {max(lengths)}" in note
    assert f"{over} rows are longer than the max length 16" in note
