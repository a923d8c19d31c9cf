"""The `online` scheme (deep mutual learning): peers that learn from each other's current
predictions, each trained, checkpointed, exported and evaluated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError
from sklearn.datasets import load_digits
from torch import Tensor, nn

from core.config import RunConfig
from tests.unit.engine.support import (
    TINY_MLP,
    Epochs,
    scheme_config,
    small_digits,
    tiny_teacher,
)
from worker.engine.export import export_pt2
from worker.engine.loading import load_model
from worker.engine.pipeline import run_distillation
from worker.engine.schemes import StepView, build_scheme
from worker.engine.schemes.online import OnlineScheme
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Cancelled, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, TensorData]:
    return small_digits(240)


def _config(**fields: Any) -> RunConfig:
    """3 tiny MLP peers for 2 epochs; `fields` replace top-level entries (`scheme` too)."""
    base = scheme_config("online", {"peers": 3}, epochs=2, checkpoint_every=4, student=TINY_MLP)
    doc = yaml.safe_load(base.to_yaml())
    return RunConfig.model_validate({**doc, **fields})


# ----------------------------------------------------------------------------------------------
# the run config


def test_the_config_takes_the_scheme_with_its_parameters_in_either_form() -> None:
    nested = _config()
    assert (nested.scheme, nested.scheme_params) == ("online", {"peers": 3})
    flat = _config(scheme="online", scheme_params={"peers": 3})
    assert flat == nested
    assert nested.resolved_scheme_params() == {
        "peers": 3,
        "weight": 1.0,
        "temperature": 1.0,
        "mutual_loss": "kl",
        "peer_layers": "",
        "peer_loss": "feature_l2",
        "peer_weight": 1.0,
    }
    dumped = yaml.safe_load(nested.to_yaml())
    assert dumped["scheme"] == {"name": "online", "params": {"peers": 3}}
    assert "scheme_params" not in dumped
    assert RunConfig.from_yaml(nested.to_yaml()) == nested  # round trip
    offline = yaml.safe_load(_config(scheme="offline").to_yaml())
    assert offline["scheme"] == "offline" and "scheme_params" not in offline  # as before


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        ({"name": "online", "params": {"peer": 2}}, "unknown parameter 'peer' for 'online'"),
        ({"name": "online", "params": {"peers": 9}}, r"'peers' of 'online' must be in \[2, 8\]"),
        ({"name": "online", "params": {"peers": 2.5}}, "must be a whole number"),
        ({"name": "offline", "params": {"peers": 2}}, "it takes: none"),
        ({"params": {"peers": 2}}, "give a name"),
        ({"name": "online", "extra": 1}, "unknown keys"),
        (
            {"name": "online", "params": {"peer_layers": "layers.0", "peer_loss": "kd"}},
            r"'peer_loss' of 'online' must be one of \['fitnets', 'at', 'feature_l2'",
        ),
        ({"name": "online", "params": {"peer_loss": "ft"}}, "must be one of"),  # pre-trains
        ({"name": "online", "params": {"mutual_loss": "ce"}}, r"must be one of \['kl', 'kd'"),
        (
            {"name": "online", "params": {"peer_layers": "layers.0, fc,layers.0"}},
            r"peer_layers names \['layers.0'\] more than once",
        ),
    ],
)
def test_unknown_or_out_of_range_scheme_parameters_are_refused(
    scheme: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(scheme=scheme)


def test_feature_losses_on_layer_pairs_are_refused_with_the_online_scheme() -> None:
    with pytest.raises(ValidationError, match=r"\['fitnets'\] match features on layer_pairs.*"
                       "peer_layers"):  # fmt: skip
        _config(
            layer_pairs=[{"teacher": "1", "student": "layers.0"}],
            losses=[{"name": "ce"}, {"name": "fitnets"}],
        )


# ----------------------------------------------------------------------------------------------
# the step


def _setup(peers: int = 2) -> tuple[OnlineScheme, nn.Module]:
    from worker.engine.students import build_student

    torch.manual_seed(0)
    student = build_student("mlp", (1, 8, 8), 10, hidden=16, depth=1)
    scheme = build_scheme("online", peers=peers, temperature=2.0)
    assert isinstance(scheme, OnlineScheme)
    scheme.setup(tiny_teacher(), student, nn.ModuleList())
    return scheme, student


def test_peers_start_from_independent_weights() -> None:
    scheme, student = _setup(peers=3)
    models = scheme.students()
    assert models[0] is student and len(models) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            sa, sb = models[a].state_dict(), models[b].state_dict()
            assert all(not torch.equal(sa[k], sb[k]) for k in sa if k.endswith("weight"))
    again, _ = _setup(peers=3)  # the same run seed gives the same peers
    assert all(
        torch.equal(v, again.students()[2].state_dict()[k])
        for k, v in models[2].state_dict().items()
    )


def test_a_zoo_peer_is_built_by_the_zoo_and_any_other_module_is_reinitialised() -> None:
    from worker.engine.schemes.online import fresh_copy
    from worker.engine.students import build_student

    torch.manual_seed(0)
    resnet = build_student("resnet8", (1, 8, 8), 10, width=0.25)
    peer = fresh_copy(resnet, 99)
    torch.manual_seed(99)
    zoo = build_student("resnet8", (1, 8, 8), 10, width=0.25)  # the zoo's own init (Kaiming)
    assert all(torch.equal(v, zoo.state_dict()[k]) for k, v in peer.state_dict().items())
    assert not torch.equal(peer.state_dict()["conv1.weight"], resnet.state_dict()["conv1.weight"])
    plain = tiny_teacher()
    other = fresh_copy(plain, 5)
    assert all(
        not torch.equal(a, b) for a, b in zip(plain.parameters(), other.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="no layers that can be re-initialised"):
        fresh_copy(nn.Sequential(nn.Flatten(), nn.ReLU()), 5)


def test_the_mutual_term_is_the_kl_towards_the_other_peers_current_outputs() -> None:
    scheme, _ = _setup(peers=3)
    x = torch.rand(5, 1, 8, 8)
    logits = [m(x) for m in scheme.students()]
    view = StepView(x, torch.zeros(5), logits[0], x.new_empty(0), 0, _no_autocast, logits)
    terms = scheme.combine({}, view)
    assert set(terms) == {"mutual", "p1/mutual", "p2/mutual"}
    t = 2.0
    for i, key in enumerate(["mutual", "p1/mutual", "p2/mutual"]):
        q = F.softmax(logits[i] / t, 1)
        by_hand = [
            (F.softmax(logits[j] / t, 1) * (F.log_softmax(logits[j] / t, 1) - q.log())).sum(1)
            for j in range(3)
            if j != i
        ]
        expected = torch.stack([kl.mean() for kl in by_hand]).mean() * t * t
        torch.testing.assert_close(terms[key], expected)
    # the other peers' outputs are targets only: peer 0's term moves peer 0 alone
    terms["mutual"].backward()
    models = scheme.students()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in models[0].parameters())
    assert all(p.grad is None for m in models[1:] for p in m.parameters())


def _no_autocast() -> Any:
    import contextlib

    return contextlib.nullcontext()


def test_one_step_gives_every_peer_gradients_from_its_loss_and_the_current_outputs(
    digits: tuple[TensorData, TensorData],
) -> None:
    """The trainer's step: every peer's parameters get gradients; the mutual terms it logs
    are the ones computed from the peers' outputs before the step (this step's, not stale)."""
    train_data, _ = digits
    seen: dict[str, Any] = {}

    class Spy(OnlineScheme):
        def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
            seen["logits"] = [z.detach().clone() for z in view.peer_logits]
            seen["before"] = [
                {k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.students()
            ]
            out = super().combine(values, view)
            seen["terms"] = {k: v.detach().clone() for k, v in out.items()}
            return out

        def param_groups(self) -> list[dict[str, Any]]:
            groups = super().param_groups()
            seen["params"] = groups[0]["params"]
            return groups

    config = _config(training={"epochs": 1, "batch_size": 30, "lr": 0.05, "device": "cpu"})
    scheme = Spy(peers=3)
    original = scheme.combine
    calls = 0

    def once(values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise _Stop
        return original(values, view)

    scheme.combine = once  # type: ignore[method-assign]
    with pytest.raises(_Stop):
        train(config, tiny_teacher(), train_data, train_data, scheme=scheme)
    assert set(seen["terms"]) == {"ce", "p1/ce", "p2/ce", "mutual", "p1/mutual", "p2/mutual"}
    models = scheme.students()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for m in models for p in m.parameters()
    )
    trained = {id(p) for p in seen["params"]}
    assert all(id(p) in trained for m in models for p in m.parameters())  # one optimizer, all
    # the logits the scheme saw are every peer's output of this batch with the weights it had
    x = train_data.x[_first_batch(config, len(train_data))]
    for model, before, z in zip(models, seen["before"], seen["logits"], strict=True):
        after = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(before)
        with torch.no_grad():
            torch.testing.assert_close(model(x), z)
        model.load_state_dict(after)
        assert any(not torch.equal(after[k], before[k]) for k in after)  # the step moved it


class _Stop(Exception):
    pass


def _first_batch(config: RunConfig, n: int) -> Tensor:
    from worker.engine.trainer import epoch_batches

    return epoch_batches(n, config.training.batch_size, config.seed, 0, False)[0]


# ----------------------------------------------------------------------------------------------
# features between peers (peer_layers, peer_loss) and another mutual loss (mutual_loss)

PEER_LAYERS = ("layer1", "layer2")


def _feature_scheme(loss: str) -> OnlineScheme:
    from worker.engine.students import build_student

    torch.manual_seed(0)
    student = build_student("resnet8", (1, 8, 8), 10, width=0.25)
    scheme = build_scheme(
        "online", peers=3, peer_layers=" layer1, layer2", peer_loss=loss, peer_weight=2.0
    )
    assert isinstance(scheme, OnlineScheme)
    scheme.setup(tiny_teacher(), student, nn.ModuleList())
    return scheme


def _standardize(f: Tensor) -> Tensor:
    mean = f.mean((0, 2, 3), keepdim=True)
    return (f - mean) / torch.sqrt(f.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)


def _attention(f: Tensor) -> Tensor:
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def _by_hand(loss: str, mine: Tensor, theirs: Tensor) -> Tensor:
    """feature_l2 at the start (identity projector, batch-standardised, MSE) or at (p = 2)."""
    if loss == "feature_l2":
        return F.mse_loss(_standardize(mine), _standardize(theirs))
    return (_attention(mine) - _attention(theirs)).pow(2).mean()


@pytest.mark.parametrize("loss", ["feature_l2", "at"])
def test_peer_features_pull_each_peer_towards_the_others_current_detached_features(
    loss: str,
) -> None:
    scheme = _feature_scheme(loss)
    models = scheme.students()
    x = torch.rand(6, 1, 8, 8)
    seen: list[dict[str, Tensor]] = [{} for _ in models]  # captured apart from the scheme's taps
    handles = [
        dict(m.named_modules())[name].register_forward_hook(
            lambda _m, _a, out, d=seen[k], n=name: d.__setitem__(n, out)
        )
        for k, m in enumerate(models)
        for name in PEER_LAYERS
    ]
    scheme.teacher_outputs(x, None, False, _no_autocast)  # the step attaches the taps here
    logits = [m(x) for m in models]
    for handle in handles:
        handle.remove()
    y = torch.zeros(6, dtype=torch.long)
    terms = scheme.combine({}, StepView(x, y, logits[0], x.new_empty(0), 0, _no_autocast, logits))
    keys = ["mutual_feat", "p1/mutual_feat", "p2/mutual_feat"]
    assert set(terms) == {"mutual", "p1/mutual", "p2/mutual", *keys}
    for i, key in enumerate(keys):  # weight 2 * mean over the other peers j of sum over layers
        per_peer = [
            sum(_by_hand(loss, seen[i][n], seen[j][n]) for n in PEER_LAYERS)
            for j in range(3)
            if j != i
        ]
        torch.testing.assert_close(terms[key], 2.0 * torch.stack(per_peer).mean())
    assert not any(h for m in models for sub in m.modules()
                   for h in (sub._forward_hooks, sub._forward_pre_hooks))  # fmt: skip
    for i, key in enumerate(keys):  # peer i's term moves peer i up to its tapped layers, alone
        for module in [*models, scheme.feature_losses]:
            module.zero_grad(set_to_none=True)
        terms[key].backward(retain_graph=True)
        mine = dict(models[i].named_parameters())
        tapped = [k for k in mine if k.startswith(("conv1", "layer1", "layer2"))]
        assert all(mine[k].grad is not None and mine[k].grad.abs().sum() > 0 for k in tapped)
        assert all(p.grad is None for k, p in mine.items() if k.startswith(("layer3", "fc")))
        others = [p for j, m in enumerate(models) if j != i for p in m.parameters()]
        assert all(p.grad is None for p in others)  # the others' features are detached
        own = [list(m.parameters()) for m in scheme.feature_losses]
        assert all(p.grad is not None for p in own[i])  # feature_l2's projectors learn
        assert all(p.grad is None for j, ps in enumerate(own) if j != i for p in ps)


def test_a_peer_loss_of_a_layer_the_student_lacks_or_that_pre_trains_is_refused() -> None:
    from worker.engine.students import build_student

    student = build_student("resnet8", (1, 8, 8), 10, width=0.25)
    scheme = build_scheme("online", peer_layers="layer1,layer9")
    with pytest.raises(ValueError, match="layer 'layer9' not in student"):
        scheme.setup(tiny_teacher(), student, nn.ModuleList())
    scheme = build_scheme("online", peer_layers="layer1", peer_loss="ft")
    with pytest.raises(ValueError, match="'ft' needs a preparation the peers do not have"):
        scheme.setup(tiny_teacher(), student, nn.ModuleList())
    with pytest.raises(ValueError, match="peer_loss must be a feature loss"):
        build_scheme("online", peer_layers="layer1", peer_loss="kd")


def test_the_mutual_term_may_be_a_catalog_logit_loss() -> None:
    """kd at the scheme's temperature is the paper's KL; dist (any catalog logit loss) takes the
    other peers' detached logits in the teacher's place."""
    from core.config import LossSpec
    from worker.engine.losses import LossContext, StepOutputs, build_loss
    from worker.engine.students import build_student

    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    runs = {}
    for name in ("kl", "kd", "dist"):
        scheme = build_scheme("online", peers=3, temperature=2.0, mutual_loss=name)
        assert isinstance(scheme, OnlineScheme)
        torch.manual_seed(0)  # the same student and peers each time
        student = build_student("mlp", (1, 8, 8), 10, hidden=16, depth=1)
        scheme.setup(tiny_teacher(), student, nn.ModuleList())
        logits = [m(x) for m in scheme.students()]
        view = StepView(x, y, logits[0], x.new_empty(0), 0, _no_autocast, logits)
        runs[name] = (scheme, logits, scheme.combine({}, view))
    keys = ("mutual", "p1/mutual", "p2/mutual")
    for key in keys:
        torch.testing.assert_close(runs["kd"][2][key], runs["kl"][2][key])
    scheme, logits, dist = runs["dist"]
    loss = build_loss(LossSpec(name="dist", params={"temperature": 2.0}), LossContext(10))
    for i, key in enumerate(keys):
        by_hand = [loss(StepOutputs(logits[i], logits[j], y)) for j in range(3) if j != i]
        torch.testing.assert_close(dist[key], torch.stack(by_hand).mean())
        assert not torch.allclose(dist[key], runs["kl"][2][key])
    dist["p1/mutual"].backward()
    models = scheme.students()
    assert all(p.grad is not None for p in models[1].parameters())
    assert all(p.grad is None for k in (0, 2) for p in models[k].parameters())


# ----------------------------------------------------------------------------------------------
# training, checkpoints


def test_a_cohort_trains_and_reports_every_peer(digits: tuple[TensorData, TensorData]) -> None:
    train_data, val_data = digits
    rec = Epochs()
    result = train(_config(), tiny_teacher(), train_data, val_data, callbacks=rec)
    assert len(result.students) == 3 and result.students[0] is result.student
    assert {"val/top1", "val/p1/top1", "val/p2/top1"} <= set(rec.epochs[-1])
    assert {"loss/ce", "loss/p2/ce", "loss/mutual", "loss/p2/mutual"} <= rec.steps[-1]
    weights = [m.state_dict()["fc.weight"] for m in result.students]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_the_teacher_guides_every_peer_when_a_loss_reads_it(
    digits: tuple[TensorData, TensorData],
) -> None:
    train_data, val_data = digits
    rec = Epochs()
    config = _config(losses=[{"name": "ce"}, {"name": "kd"}], scheme="online")
    train(config, tiny_teacher(), train_data, val_data, callbacks=rec)
    assert {"loss/kd", "loss/p1/kd", "loss/mutual", "loss/p1/mutual"} <= rec.steps[-1]


def test_a_resumed_cohort_ends_where_an_uninterrupted_one_does(
    digits: tuple[TensorData, TensorData], tmp_path: Path
) -> None:
    train_data, val_data = digits
    config = _config()
    full = [m.state_dict() for m in train(config, tiny_teacher(), train_data, val_data).students]
    with pytest.raises(Cancelled):
        train(
            config,
            tiny_teacher(),
            train_data,
            val_data,
            callbacks=Epochs(stop_at=5),
            checkpoint_path=tmp_path / "c.ckpt",
        )
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert ckpt["step"] == 5 and len(ckpt["peers"]) == 2  # mid-epoch, peers 1 and 2
    resumed = train(
        config, tiny_teacher(), train_data, val_data, checkpoint_path=tmp_path / "c.ckpt"
    )
    for a, b in zip(full, [m.state_dict() for m in resumed.students], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    fewer = _config(scheme={"name": "online", "params": {"peers": 2}})
    with pytest.raises(ValueError, match="holds 3 peers; this run trains 2"):
        train(fewer, tiny_teacher(), train_data, val_data, checkpoint_path=tmp_path / "c.ckpt")


def test_a_resumed_cohort_with_peer_features_ends_where_an_uninterrupted_one_does(
    digits: tuple[TensorData, TensorData], tmp_path: Path
) -> None:
    """peer_layers through the trainer: every peer logs its feature term, the peer losses'
    projectors train and are checkpointed, and a resume ends bit-identical."""
    train_data, val_data = digits
    params = {"peers": 3, "peer_layers": "layers.0", "mutual_loss": "dist"}
    config = _config(scheme={"name": "online", "params": params})
    rec, scheme = Epochs(), build_scheme("online", **params)
    full = train(config, tiny_teacher(), train_data, val_data, callbacks=rec, scheme=scheme)
    assert {"loss/mutual_feat", "loss/p1/mutual_feat", "loss/p2/mutual_feat"} <= rec.steps[-1]
    assert isinstance(scheme, OnlineScheme)
    projectors = scheme.feature_losses.state_dict()
    assert set(projectors) == {f"{k}.projectors.0.weight" for k in range(3)}
    assert all(not torch.equal(w, torch.eye(16)) for w in projectors.values())  # they learnt
    with pytest.raises(Cancelled):
        train(config, tiny_teacher(), train_data, val_data, callbacks=Epochs(stop_at=5),
              checkpoint_path=tmp_path / "c.ckpt", scheme=build_scheme("online", **params))  # fmt: skip
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert ckpt["step"] == 5 and set(ckpt["peer_losses"]) == set(projectors)
    again = build_scheme("online", **params)
    resumed = train(config, tiny_teacher(), train_data, val_data,
                    checkpoint_path=tmp_path / "c.ckpt", scheme=again)  # fmt: skip
    for a, b in zip(full.students, resumed.students, strict=True):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert isinstance(again, OnlineScheme)
    assert all(torch.equal(v, again.feature_losses.state_dict()[k]) for k, v in projectors.items())


# ----------------------------------------------------------------------------------------------
# the whole run: every peer exported and evaluated


def test_a_whole_run_exports_and_evaluates_every_peer(tmp_path: Path) -> None:
    d = load_digits()
    np.savez(tmp_path / "data.npz", x=(d.images[:300, None] / 16.0).astype("float32"),
             y=d.target[:300])  # fmt: skip
    export_pt2(tiny_teacher().eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    config = _config(
        teacher={"path": str(tmp_path / "teacher.pt2")},
        dataset={"path": str(tmp_path / "data.npz"), "val_fraction": 0.25},
        losses=[{"name": "ce"}, {"name": "kd"}],
        training={"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu"},
    )
    out = tmp_path / "out"
    summary = run_distillation(config, tmp_path / "teacher.pt2", tmp_path / "data.npz", out)
    arts = summary["artifacts"]
    for k in (1, 2):
        for kind in ("student_safetensors", "student_pt2", "student_onnx"):
            assert arts[f"peer{k}_{kind}"] == f"peer{k}_{arts[kind]}"
    assert all((out / name).is_file() for name in arts.values())
    report = json.loads((out / "evaluation.json").read_text())
    assert [p["peer"] for p in report["peers"]] == [0, 1, 2]
    assert report["peers"][0]["student_top1"] == report["student_top1"]  # peer 0 = top level
    x = torch.from_numpy((d.images[:300, None] / 16.0).astype("float32"))
    outputs = []
    for k, peer in enumerate(report["peers"]):
        assert peer["artifacts"]["student_pt2" if k == 0 else f"peer{k}_student_pt2"]
        assert 0.0 <= peer["student_top1"] <= 1.0 and peer["student_params"] > 0
        name = "student.pt2" if k == 0 else f"peer{k}_student.pt2"
        module = load_model(out / name, "pt2").module
        with torch.inference_mode():
            outputs.append(module(x))
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])
    assert yaml.safe_load((out / "run.yaml").read_text())["scheme"]["name"] == "online"


def test_distill_studio_train_runs_a_cohort(tmp_path: Path) -> None:
    """`distill-studio train run.yaml` (no server) with `scheme: {name: online, ...}`, the
    peers matching their features at a layer too."""
    from typer.testing import CliRunner

    from cli.main import app

    d = load_digits()
    np.savez(tmp_path / "data.npz", x=(d.images[:200, None] / 16.0).astype("float32"),
             y=d.target[:200])  # fmt: skip
    export_pt2(tiny_teacher().eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    doc = yaml.safe_load(_config().to_yaml())
    doc["teacher"], doc["dataset"] = {"path": "teacher.pt2"}, {"path": "data.npz"}
    doc["scheme"]["params"] = {"peers": 2, "temperature": 3.0, "peer_layers": "layers.0"}
    doc["training"]["epochs"] = 1
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [p["peer"] for p in summary["peers"]] == [0, 1]
    assert {"student.pt2", "peer1_student.pt2", "peer1_student.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    saved = RunConfig.from_yaml((out / "run.yaml").read_text())
    assert saved.scheme_params == {"peers": 2, "temperature": 3.0, "peer_layers": "layers.0"}


@pytest.mark.parametrize("name", ["reverse_kl", "gkd_jsd", "skew_kl", "tvd"])
def test_the_divergences_serve_as_the_mutual_term(name: str) -> None:
    """The token-level divergences are catalog logit losses too: each peer's mutual term is
    finite and its gradient reaches that peer alone."""
    from core.catalog.schemes import MUTUAL_LOSSES
    from worker.engine.students import build_student

    assert name in MUTUAL_LOSSES
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    scheme = build_scheme("online", peers=2, temperature=2.0, mutual_loss=name)
    assert isinstance(scheme, OnlineScheme)
    scheme.setup(tiny_teacher(), build_student("mlp", (1, 8, 8), 10, hidden=16, depth=1),
                 nn.ModuleList())  # fmt: skip
    logits = [m(x) for m in scheme.students()]
    out = scheme.combine({}, StepView(x, y, logits[0], x.new_empty(0), 0, _no_autocast, logits))
    assert torch.isfinite(out["mutual"]) and out["mutual"] > 0
    out["p1/mutual"].backward()
    assert all(p.grad is not None for p in scheme.students()[1].parameters())
    assert all(p.grad is None for p in scheme.students()[0].parameters())
