"""The run page's line about the teacher-output cache (`ui/app_pages/run.teacher_cache_line`)."""

from __future__ import annotations

from ui.app_pages.run import teacher_cache_line


def test_the_line_says_what_the_cache_did_or_why_it_was_not_used() -> None:
    assert teacher_cache_line({}) is None
    used = {"used": True, "top_k": 10, "size_bytes": 2048, "replayed_batches": 6,
            "recorded_batches": 2}  # fmt: skip
    assert teacher_cache_line({"teacher_cache": used}) == (
        "Teacher-output cache (top-10 logits, 2 KiB): 6 of 8 training batches replayed "
        "without the teacher"
    )
    unloaded = {**used, "teacher_loaded": "no"}
    assert str(teacher_cache_line({"teacher_cache": unloaded})).endswith(
        "without the teacher; the teacher was not loaded (its figures are those of the run "
        "that recorded it)"
    )
    for_student = {**used, "teacher_loaded": "to build the student"}
    assert "read only to build the student, and the teacher never ran" in str(
        teacher_cache_line({"teacher_cache": for_student})
    )
    assert teacher_cache_line({"teacher_cache": {**used, "teacher_loaded": "yes"}}) == (
        teacher_cache_line({"teacher_cache": used})
    )
    whole = {**used, "top_k": 0}
    assert "(every logit, 2 KiB)" in str(teacher_cache_line({"teacher_cache": whole}))
    off = {"used": False, "why": "losses[1] 'at' is a feature loss"}
    assert teacher_cache_line({"teacher_cache": off}) == (
        "Teacher-output cache not used: losses[1] 'at' is a feature loss"
    )
