"""Issue 12's evidence for language models, run through the trainer (no worker): the demo GPT-2
(`tests.lm_helpers`) distilled into a fresh 2-block student reaches a lower validation perplexity
than the same student trained on the text alone (ce), same seed, data and steps: forward KL and
skew KL here (measured: ce 173, kd 150, skew_kl 150, teacher 142). The setting is
`benchmarks/lm_losses.py`'s, one seed; the benchmark runs every LM loss over 3 seeds
(docs/benchmarks.md): gkd_jsd and tvd gain as much, reverse KL does not for a fresh student
(MiniLLM starts reverse KL from a student that already models the text). Started from two of
the teacher's blocks (`hf_layers`), reverse KL beats the student alone too (measured: ce 157,
reverse_kl 143)."""

from __future__ import annotations

import pytest

from benchmarks import lm_losses
from tests.lm_helpers import lm_demo_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROWS, EPOCHS = lm_losses.ROWS, lm_losses.EPOCHS
DISTILLED = ("kd (forward KL)", "skew_kl (alpha 0.1)")


@pytest.fixture(scope="module")
def setup() -> lm_losses.Setup:
    demo = lm_demo_files()
    return lm_losses.setup(demo.teacher, demo.spread(ROWS))


def test_distilled_students_beat_the_student_alone(setup: lm_losses.Setup) -> None:
    alone = lm_losses.distil(setup, lm_losses.LOSSES["ce (student alone)"], 0, EPOCHS)
    teacher = lm_losses.teacher_perplexity(setup)
    found = {"ce": alone["perplexity"], "teacher": teacher}
    for label in DISTILLED:
        run = lm_losses.distil(setup, lm_losses.LOSSES[label], 0, EPOCHS)
        found[label] = run["perplexity"]
        assert run["steps"] == alone["steps"]
    print("validation perplexity:", found)
    assert teacher < min(found[label] for label in DISTILLED)
    for label in DISTILLED:
        assert found[label] < found["ce"], (label, found)


def test_reverse_kl_beats_the_student_alone_from_the_teachers_blocks(
    setup: lm_losses.Setup,
) -> None:
    student = lm_losses.INIT_STUDENT
    alone = lm_losses.distil(setup, lm_losses.LOSSES["ce (student alone)"], 0, EPOCHS, student)
    label = "reverse_kl (MiniLLM)"
    run = lm_losses.distil(setup, lm_losses.LOSSES[label], 0, EPOCHS, student)
    assert run["steps"] == alone["steps"]
    assert run["perplexity"] < alone["perplexity"], (run, alone)
    assert run["agreement"] > alone["agreement"], (run, alone)
