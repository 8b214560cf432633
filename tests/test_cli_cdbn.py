"""Smoke tests of the CDBN verbs on tiny data, and the user errors they must refuse cleanly."""
import json
from pathlib import Path

import numpy as np
import pytest

from genconv.cli import main

TINY = ["--data", "mnist", "--limit", "300", "--layer", "6:5:2", "--layer", "4:3:2", "--epochs", "1",
        "--batch-size", "50", "--quiet", "--device", "cpu"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cdbn") / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "cdbn", *TINY, "--out", str(d)])
    assert e.value.code == 0
    return d


def test_train_writes_run_folder(trained):
    for name in ("model.safetensors", "model.json", "config.toml", "metrics.jsonl", "filters_layer1.png",
                 "filters_layer2.png"):
        assert (trained / name).exists(), name
    meta = json.loads((trained / "model.json").read_text())
    assert meta["kind"] == "cdbn" and meta["shapes"]["layers.0.W"] == [6, 1, 5, 5]
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and {json.loads(l)["stage"] for l in lines} == {0, 1}


def test_show_sample_features_evaluate(trained, tmp_path, capsys):
    code, out, err = run_cli(["show", str(trained), "--out", str(tmp_path / "show")], capsys)
    assert code == 0 and (tmp_path / "show" / "filters_layer2.png").exists()
    code, out, err = run_cli(["sample", str(trained), "--n", "4", "--steps", "3", "--out", str(tmp_path / "s.png"),
                              "--device", "cpu"], capsys)
    assert code == 0 and (tmp_path / "s.png").exists()
    code, out, err = run_cli(["sample", str(trained), "--n", "4", "--steps", "3", "--occlude", "left",
                              "--out", str(tmp_path / "o.png"), "--device", "cpu"], capsys)
    assert code == 0 and "hidden-half MSE" in out and (tmp_path / "o.png").exists()
    code, out, err = run_cli(["features", str(trained), "--split", "test", "--limit", "20",
                              "--out", str(tmp_path / "f.npz"), "--device", "cpu"], capsys)
    assert code == 0
    with np.load(tmp_path / "f.npz", allow_pickle=False) as f:
        # layer 1: 6 maps, 24x24 hidden -> 12x12 pooled; layer 2: 4 maps, 10x10 -> 5x5
        assert f["X"].shape == (20, 6 * 12 * 12 + 4 * 5 * 5) and f["y"].shape == (20,)
        assert np.all((f["X"] >= 0) & (f["X"] <= 1))
    code, out, err = run_cli(["evaluate", str(trained), "--counts", "100,all", "--draws", "2", "--limit-train", "300",
                              "--limit-test", "100", "--out", str(tmp_path / "ev"), "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())["table2"]
    assert set(res) == {"100", "all"} and res["100"]["draws"] == 2 and 0 <= res["all"]["mean"] <= 100
    # --mean-field 0 evaluates upward-pass features; the features command with the same flag agrees with the model
    code, out, err = run_cli(["evaluate", str(trained), "--counts", "100", "--draws", "1", "--limit-train", "300",
                              "--limit-test", "100", "--mean-field", "0", "--device", "cpu"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["evaluate", str(trained), "--mean-field", "-1", "--device", "cpu"], capsys)
    assert code == 2 and "--mean-field must be >= 0" in err
    code, out, err = run_cli(["features", str(trained), "--split", "test", "--limit", "20", "--mean-field", "0",
                              "--out", str(tmp_path / "f0.npz"), "--device", "cpu"], capsys)
    from genconv.data import load
    from genconv.models.cdbn import CDBN
    net = CDBN.load(trained, device="cpu").net_
    with np.load(tmp_path / "f0.npz", allow_pickle=False) as f:
        up = net.features(load("mnist", "test").X[:20], n_iter=0).numpy()
        assert np.allclose(f["X"], up, atol=1e-6)


def test_resume_continues_and_refuses_overwrite(tmp_path, capsys):
    d = tmp_path / "r"
    code, _, _ = run_cli(["train", "cdbn", *TINY, "--out", str(d)], capsys)
    assert code == 0
    before = (d / "model.safetensors").read_bytes()
    code, _, err = run_cli(["train", "cdbn", *TINY, "--out", str(d)], capsys)
    assert code == 2 and "--resume" in err and (d / "model.safetensors").read_bytes() == before
    args = [a if a != "1" else "2" for a in TINY]          # --epochs 2
    code, _, err = run_cli(["train", "cdbn", *args, "--out", str(d), "--resume"], capsys)
    assert code == 0, err
    meta = json.loads((d / "model.json").read_text())
    # greedy training: layer 1 was frozen once layer 2 started, so only the top layer continues
    assert meta["progress"]["layer_epochs"] == [1, 2]
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("extra, message", [
    (["--p", "1.5"], "sparsity target p must lie strictly between 0 and 1"),
    (["--p", "0"], "sparsity target p must lie strictly between 0 and 1"),
    (["--epsilon", "0"], "learning rate epsilon must be > 0"),
    (["--epsilon", "-1"], "learning rate epsilon must be > 0"),
    (["--layer", "6:5:0"], "pooling ratio C must be an integer >= 1"),
    (["--layer", "6:40:2"], "larger than the input"),
    (["--layer", "6x5"], "expected K:N_W:C"),
])
def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, extra, message):
    d = tmp_path / "bad"
    args = list(TINY)
    if extra[0] == "--layer":
        i = args.index("--layer")
        args = args[:i] + args[i + 4:]                         # drop the two default layers
    code, out, err = run_cli(["train", "cdbn", *args, *extra, "--out", str(d)], capsys)
    assert code == 2
    assert message in err and err.startswith("genconv: error:") and len(err.strip().splitlines()) == 1
    assert not d.exists()


def test_unknown_data_set_and_recipe(tmp_path, capsys):
    code, _, err = run_cli(["train", "cdbn", "--data", "nope", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "unknown data set" in err and not (tmp_path / "x").exists()
    code, _, err = run_cli(["run", "no-such-recipe", "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "unknown recipe" in err and "cdbn-mnist" in err and not (tmp_path / "y").exists()


def test_resume_without_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(["train", "cdbn", *TINY, "--out", str(tmp_path / "z"), "--resume"], capsys)
    assert code == 2 and "no checkpoint" in err


def test_corrupt_and_foreign_checkpoints(trained, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])          # truncated
    code, _, err = run_cli(["show", str(bad), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and "corrupt or truncated" in err and not (tmp_path / "o1").exists()
    (bad / "model.json").write_text("{not json")
    code, _, err = run_cli(["features", str(bad), "--out", str(tmp_path / "f.npz")], capsys)
    assert code == 2 and "corrupt" in err and not (tmp_path / "f.npz").exists()
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    meta = json.loads((other / "model.json").read_text())
    meta["kind"] = "something-else"
    (other / "model.json").write_text(json.dumps(meta))
    code, _, err = run_cli(["features", str(other), "--out", str(tmp_path / "g.npz")], capsys)
    assert code == 2 and "not a 'cdbn' one" in err


def test_quick_recipe_writes_table2(tmp_path, capsys):
    out = tmp_path / "q"
    code, stdout, err = run_cli(["run", "cdbn-mnist", "--quick", "--out", str(out), "--device", "cpu",
                                 "--set", "data.unsup_examples=300", "--set", "data.train_examples=1100",
                                 "--set", "data.test_examples=200", "--set", "model.batch_size=50",
                                 "--set", "layer1.n_bases=6", "--set", "layer2.n_bases=4",
                                 "--set", 'evaluation.counts=["1000","all"]', "--set", "evaluation.svm_C=[0.1]",
                                 "--set", "evaluation.occlusion_sweeps=2"], capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert set(res["table2"]) == {"1000", "all"}
    assert all(0 <= v["mean"] <= 100 for v in res["table2"].values())
    report = (out / "report.md").read_text()
    assert "Lee et al. 2009" in report and "2.62" in report
    assert Path(out / "occlusion.png").exists()
