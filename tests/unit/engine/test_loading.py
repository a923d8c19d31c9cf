"""Safe loading: pt2 and safetensors round trips, hooks on unflattened programs, refusals.

The malicious files here are real: if a check let one through, loading would create the marker
file. Every refusal test asserts that the marker never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worker.engine.export import export_pt2, save_safetensors
from worker.engine.loading import (
    ModelLoadError,
    UnsafeModelError,
    check_archive,
    load_model,
)
from worker.engine.students import build_student
from worker.engine.taps import FeatureTaps, inspect_model

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_student("resnet8", SHAPE, 10, width=0.5).eval()


@pytest.fixture(scope="module")
def archive(student: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "teacher.pt2"
    student.train()
    export_pt2(student, SHAPE, path)  # exports in eval mode ...
    assert student.training  # ... and gives the caller's mode back
    student.eval()
    return path


# --- pt2 round trip ---------------------------------------------------------------------------


def test_pt2_round_trip(archive: Path, student: torch.nn.Module) -> None:
    loaded = load_model(archive, "pt2")
    assert loaded.format == "pt2" and loaded.input_shape == SHAPE and loaded.num_classes == 10
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())
    for batch in (1, 5):
        x = torch.randn(batch, *SHAPE)
        torch.testing.assert_close(loaded.module(x), student(x), atol=1e-5, rtol=1e-4)


def test_hooks_fire_on_unflattened_pt2(archive: Path) -> None:
    module = load_model(archive, "pt2").module
    seen: dict[str, tuple[int, ...]] = {}
    module.get_submodule("layer2").register_forward_hook(
        lambda _m, _a, out: seen.__setitem__("layer2", tuple(out.shape))
    )
    module(torch.randn(3, *SHAPE))
    assert seen == {"layer2": (3, 16, 4, 4)}
    with FeatureTaps(module, [("layer1", "output"), ("fc", "input")], detach=True) as taps:
        module(torch.randn(2, *SHAPE))
        assert [tuple(f.shape) for f in taps.features] == [(2, 8, 8, 8), (2, 32)]


def test_inspection_of_loaded_pt2_keeps_names_and_types(archive: Path) -> None:
    loaded = load_model(archive, "pt2")
    info = inspect_model(loaded.module, loaded.input_shape)
    rows = {r["path"]: r for r in info["layers"]}
    assert rows["layer1.0.conv1"]["type"] == "Conv2d"
    assert [s["end"] for s in info["stages"]] == ["layer1", "layer2", "layer3", "fc"]


class _TracedOnItsDevice(torch.nn.Module):
    """What torch.export pins to the device it traced on: a dtype cast (an
    `_assert_tensor_metadata` check of the device) and a factory call (`arange(device=cpu)`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.inner = torch.nn.Sequential(torch.nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).float()
        return self.inner(self.fc(x.double().float() + positions))


def _device_bound_archive(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = _TracedOnItsDevice().eval()
    path = tmp_path / "bound.pt2"
    export_pt2(model, (4,), path)
    return model, path


def test_a_pt2_exported_on_the_cpu_runs_on_another_device(tmp_path: Path) -> None:
    """As torch loads it, the graph refuses inputs on another device than the one it was
    exported on (here `meta`, standing in for a GPU: the same device check fails); as the studio
    loads it (`follow_input_device`), it runs wherever its inputs are, with the same values on
    the CPU. An H200 run of a detection student's .pt2 failed this way before."""
    model, path = _device_bound_archive(tmp_path)
    x = torch.randn(3, 4)
    meta = torch.device("meta")
    as_torch_loads_it = torch.export.unflatten(torch.export.load(str(path))).to(meta)
    with pytest.raises(RuntimeError, match="device"):
        as_torch_loads_it(x.to(meta))
    loaded = load_model(path, "pt2").module
    torch.testing.assert_close(loaded(x), model(x))
    moved = load_model(path, "pt2").module.to(meta)
    assert moved(x.to(meta)).device == meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_pt2_exported_on_the_cpu_runs_on_the_gpu_and_back(tmp_path: Path) -> None:
    model, path = _device_bound_archive(tmp_path)
    x = torch.randn(3, 4)
    loaded = load_model(path, "pt2").module.cuda()
    torch.testing.assert_close(loaded(x.cuda()).cpu(), model(x))
    torch.testing.assert_close(loaded.cpu()(x), model(x))


def test_training_mode_export_is_refused(tmp_path: Path) -> None:
    model = build_student("mlp", (6,), 3, hidden=8, dropout=0.5).train()
    program = torch.export.export(model, (torch.randn(2, 6),))
    path = tmp_path / "train.pt2"
    torch.export.save(program, path)
    with pytest.raises(ModelLoadError, match=r"model.eval\(\)"):
        load_model(path, "pt2")


# --- malicious archives -------------------------------------------------------------------------


class _Evil:
    """Pickles to `os.system("touch <marker>")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _EvilExec(_Evil):
    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _memo_trick(marker: Path) -> bytes:
    """STACK_GLOBAL whose names come from the memo after decoy strings were pushed and popped."""

    def s(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    return (
        b"\x80\x04"
        + s("posix")
        + b"\x94"
        + s("system")
        + b"\x94"
        + s("collections")
        + s("OrderedDict")
        + b"00"  # decoys, popped
        + b"h\x00h\x01\x93"
        + s(f"touch {marker}")
        + b"\x85R."
    )


def _rewrite(
    src: Path,
    dst: Path,
    edit: Callable[[str, bytes], bytes | None],
    add: dict[str, bytes] | None = None,
) -> Path:
    """Copy a zip, passing each member through `edit` (None keeps it), adding `add`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, edit(info.filename, data) or data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def _torch_zip(data_pkl: bytes) -> bytes:
    """A torch.save-style zip whose data.pkl is `data_pkl`."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def _root(archive: Path) -> str:
    with zipfile.ZipFile(archive) as z:
        return z.namelist()[0].split("/")[0]


PICKLES: dict[str, Callable[[Path], bytes]] = {
    "os.system protocol 2": lambda m: pickle.dumps(_Evil(m), protocol=2),
    "os.system protocol 4 (STACK_GLOBAL)": lambda m: pickle.dumps(_Evil(m), protocol=4),
    "builtins.exec protocol 5": lambda m: pickle.dumps(_EvilExec(m), protocol=5),
    "memo trick": _memo_trick,
}


@pytest.mark.parametrize("kind", sorted(PICKLES))
def test_pickle_in_sample_inputs_is_refused(kind: str, archive: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _torch_zip(PICKLES[kind](marker))
    bad = _rewrite(
        archive,
        tmp_path / "bad.pt2",
        lambda name, _d: payload if name.endswith("sample_inputs/model.pt") else None,
    )
    with pytest.raises(UnsafeModelError, match="refused"):
        check_archive(bad)
    with pytest.raises(UnsafeModelError):
        load_model(bad, "pt2")
    assert not marker.exists()


@pytest.mark.parametrize("path_name", ["weight_0", "../models/model.json"])
def test_pickled_weight_payload_is_refused(path_name: str, archive: Path, tmp_path: Path) -> None:
    """Weights marked `use_pickle` are torch.load-ed with weights_only=False by torch.export."""
    marker = tmp_path / "pwned"
    root = _root(archive)

    def edit(name: str, data: bytes) -> bytes | None:
        if name.endswith("data/weights/model_weights_config.json"):
            doc = json.loads(data)
            doc["config"]["conv1.weight"].update(use_pickle=True, path_name=path_name)
            return json.dumps(doc).encode()
        if name == f"{root}/data/weights/weight_0":
            return _torch_zip(pickle.dumps(_Evil(marker), protocol=2))
        return None

    bad = _rewrite(archive, tmp_path / "bad.pt2", edit)
    with pytest.raises(UnsafeModelError, match="refused|plain file name"):
        load_model(bad, "pt2")
    assert not marker.exists()


def test_protocol_0_pickle_member_is_refused(archive: Path, tmp_path: Path) -> None:
    """A member outside the layout is refused by name, whatever it holds."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker), protocol=0)
    assert not evil.startswith(b"\x80")
    bad = _rewrite(
        archive,
        tmp_path / "bad.pt2",
        lambda _n, _d: None,
        add={f"{_root(archive)}/data/extra.pkl": evil},
    )
    with pytest.raises(UnsafeModelError, match="'[^']*/data/extra.pkl' is not part of"):
        load_model(bad, "pt2")
    assert not marker.exists()


def _open_pickle(marker: Path) -> bytes:
    """A protocol-0 pickle (no \\x80 header) that calls builtins.open(marker, 'w')."""
    return f"cbuiltins\nopen\n(V{marker}\nVw\ntR.".encode()


def test_renamed_protocol_0_sample_inputs_never_run(archive: Path, tmp_path: Path) -> None:
    """Issue 9: `data/sample_inputs/model.PT` (upper case) holding a protocol-0 pickle. torch's
    reader matches names case-insensitively and retries `torch.load` with weights_only=False."""
    marker = tmp_path / "pwned"
    bad = _rewrite(
        archive,
        tmp_path / "bad.pt2",
        lambda name, _d: b"" if name.endswith("sample_inputs/model.pt") else None,
    )
    with zipfile.ZipFile(bad) as zin, zipfile.ZipFile(tmp_path / "renamed.pt2", "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("sample_inputs/model.pt"):
                zout.writestr(info.filename[:-3] + ".PT", _open_pickle(marker))
            else:
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(UnsafeModelError, match=r"'[^']*/data/sample_inputs/model\.PT' is not part"):
        try:
            load_model(tmp_path / "renamed.pt2", "pt2").module(torch.randn(1, *SHAPE))
        finally:
            assert not marker.exists(), "the pickle ran"


def test_extra_files_are_never_read(archive: Path, tmp_path: Path) -> None:
    """`extra/` text files (torch.export.save(extra_files=...)) are accounted for, then dropped."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker), protocol=0)
    ok = _rewrite(
        archive,
        tmp_path / "extra.pt2",
        lambda _n, _d: None,
        add={f"{_root(archive)}/extra/data.pkl": evil},
    )
    load_model(ok, "pt2").module(torch.randn(1, *SHAPE))
    assert not marker.exists()


class _FillsATensor(torch.nn.Module):
    """Exports as ones -> fill_ -> add; the attack swaps `ones` for `from_file(shared=True)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.ones(4, dtype=torch.uint8)
        t.fill_(88)
        return x + t


def _from_file_archive(victim: Path, tmp_path: Path) -> Path:
    """Issue 9: a graph that maps `victim` shared and fills it with 'X' bytes."""
    program = torch.export.export(_FillsATensor(), (torch.randn(2, 4),))
    clean = tmp_path / "fills.pt2"
    torch.export.save(program, clean)

    def edit(doc: dict) -> None:
        node = _first_node(doc)
        assert node["target"] == "torch.ops.aten.ones.default"
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [
            {"name": "filename", "arg": {"as_string": str(victim)}, "kind": 1},
            {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
            {"name": "size", "arg": {"as_int": 4}, "kind": 1},
            {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
        ]

    return _rewrite(clean, tmp_path / "from_file.pt2", _edit_program(edit))


def test_from_file_then_fill_is_refused_naming_the_operator(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"safe")
    bad = _from_file_archive(victim, tmp_path)
    with pytest.raises(UnsafeModelError, match="'aten::from_file' takes a file name"):
        try:
            load_model(bad, "pt2").module(torch.randn(2, 4))
        finally:
            assert victim.read_bytes() == b"safe", "the graph wrote the file"


class _WritesItsInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return x * 2


class _WritesItsBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scale.view(2, 2).mul_(0)
        return x * self.scale


@pytest.mark.parametrize(
    ("module", "written"), [(_WritesItsInput, "'x'"), (_WritesItsBuffer, "'b_scale'")]
)
def test_in_place_writes_into_inputs_or_weights_are_refused(
    module: type[torch.nn.Module], written: str, tmp_path: Path
) -> None:
    path = tmp_path / "writes.pt2"
    torch.export.save(torch.export.export(module(), (torch.randn(2, 4),)), path)
    with pytest.raises(UnsafeModelError, match=f"'aten::(add|mul)_' writes into {written}"):
        load_model(path, "pt2")


def test_digit_named_sequential_teacher_is_accepted(tmp_path: Path) -> None:
    """Issue 9: nn.Sequential(Flatten, Linear) was refused ("'1.weight' is not a dotted name")."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path / "seq.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 8, 8),)), path)
    loaded = load_model(path, "pt2")
    assert loaded.input_shape == (1, 8, 8) and loaded.num_classes == 10
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.module(x), model(x))
    rows = {r["path"]: r for r in inspect_model(loaded.module, loaded.input_shape)["layers"]}
    assert rows["1"]["type"] == "Linear" and rows["1"]["output_shape"][-1] == 10
    with FeatureTaps(loaded.module, [("1", "output"), ("0", "output")], detach=True) as taps:
        loaded.module(x)
        assert [tuple(f.shape) for f in taps.features] == [(2, 10), (2, 64)]


def _edit_program(edit: Callable[[dict], None]) -> Callable[[str, bytes], bytes | None]:
    def apply(name: str, data: bytes) -> bytes | None:
        if not name.endswith("models/model.json"):
            return None
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc).encode()

    return apply


def _first_node(doc: dict) -> dict:
    return doc["graph_module"]["graph"]["nodes"][0]


def _set_expr(doc: dict, expr: str) -> None:
    values = doc["graph_module"]["graph"]["tensor_values"]
    next(iter(values.values()))["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": None}}


PROGRAM_ATTACKS: dict[str, Callable[[dict, Path], None]] = {
    # sympy.sympify evaluates shape expressions with eval()
    "shape expression": lambda d, m: _set_expr(d, f"__import__('os').system('touch {m}')"),
    # the deserializer resolves any attribute chain under `torch`
    "operator target": lambda d, m: _first_node(d).__setitem__("target", "torch.os.system"),
    # guard code is compiled to Python when the module is built
    "guard code": lambda d, m: d.__setitem__(
        "guards_code", [f"__import__('os').system('touch {m}')"]
    ),
    # names are pasted into torch.fx generated code
    "parameter name": lambda d, m: d["graph_module"]["signature"]["input_specs"][0][
        "parameter"
    ].__setitem__("parameter_name", 'x"), __import__("os").system("touch m'),
}


@pytest.mark.parametrize("attack", sorted(PROGRAM_ATTACKS))
def test_executable_program_content_is_refused(attack: str, archive: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = _rewrite(
        archive,
        tmp_path / "bad.pt2",
        _edit_program(lambda doc: PROGRAM_ATTACKS[attack](doc, marker)),
    )
    with pytest.raises(UnsafeModelError, match="refused"):
        load_model(bad, "pt2")
    assert not marker.exists()


def test_clean_rewrite_still_passes_the_check(archive: Path, tmp_path: Path) -> None:
    check_archive(_rewrite(archive, tmp_path / "same.pt2", lambda _n, _d: None))


def test_aoti_code_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = _rewrite(
        archive,
        tmp_path / "bad.pt2",
        lambda _n, _d: None,
        add={f"{_root(archive)}/data/aotinductor/model/model.so": b"\x7fELF"},
    )
    with pytest.raises(UnsafeModelError, match="AOTInductor"):
        check_archive(bad)


def test_truncated_or_foreign_archive_is_refused(archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="re-export with torch.export.save"):
        load_model(cut, "pt2")
    text = tmp_path / "notes.pt2"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a torch.export archive"):
        check_archive(text)


# --- safetensors ----------------------------------------------------------------------------


def test_safetensors_round_trip(student: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_safetensors(student, path)
    kwargs = {"input_shape": list(SHAPE), "num_classes": 10, "width": 0.5}
    loaded = load_model(path, "safetensors", "resnet8", kwargs)
    assert loaded.input_shape == SHAPE and loaded.num_classes == 10
    x = torch.randn(4, *SHAPE)
    torch.testing.assert_close(loaded.module(x), student(x))
    # the studio's metadata alone is enough
    again = load_model(path, "safetensors")
    torch.testing.assert_close(again.module(x), student(x))


def test_safetensors_errors_say_what_to_fix(student: torch.nn.Module, tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(plain))
    with pytest.raises(ModelLoadError, match="resnet8, resnet14"):
        load_model(plain, "safetensors", "resnet9", {"input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(ModelLoadError, match="input_shape"):
        load_model(plain, "safetensors", "resnet8", {"num_classes": 10})
    with pytest.raises(ModelLoadError, match=r"shape mismatches \(conv1.weight: file \[8,|missing"):
        load_model(plain, "safetensors", "resnet8", {"input_shape": [1, 8, 8], "num_classes": 10})


def test_safetensors_with_lying_header_is_refused(tmp_path: Path) -> None:
    entry = {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}
    header = json.dumps({"w": entry}).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ModelLoadError, match="header lies"):
        load_model(path, "safetensors", "mlp", {"input_shape": [4], "num_classes": 2})
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(huge, "safetensors", "mlp", {"input_shape": [4], "num_classes": 2})
