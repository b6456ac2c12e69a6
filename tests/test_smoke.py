"""``debug=smoke`` over a preset: what it keeps of the preset (metalearn_cli/smoke.py)."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from metalearn_cli.cli import main
from metalearn_cli.smoke import keep_no_meta_training, preset_iterations

SHRINK = ["encoder.width=8", "encoder.widths=null", "pretrain.iterations=2", "pretrain.val_every=1", "pretrain.val_episodes=2",
          "trainer.val_episodes=2", "eval.episodes=2", "device=cpu", "trainer.progress=false"]


def test_a_preset_without_meta_training_stays_so_under_smoke(tmp_path):
    """RFS's presets test the pre-trained encoder (trainer.iterations: 0); smoke's 20 must not turn meta-training on."""
    run = tmp_path / "run"
    assert main(["train", "experiment=rfs_omniglot_5w1s", "debug=smoke", *SHRINK, f"hydra.run.dir={run}"]) == 0
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.trainer.iterations == 0 and saved.pretrain.iterations == 2
    assert json.loads((run / "results.json").read_text())["iterations"] == 0


def test_typed_iterations_and_other_presets_keep_smokes_budget():
    cfg = OmegaConf.create({"trainer": {"iterations": 20}, "resume": None})
    keep_no_meta_training(cfg, {"debug": "smoke", "experiment": "rfs_omniglot_5w1s"}, ["trainer.iterations"])
    assert cfg.trainer.iterations == 20  # typed: the user's count
    keep_no_meta_training(cfg, {"debug": "smoke", "experiment": "best_omniglot_5w1s"}, [])
    assert cfg.trainer.iterations == 20  # a preset that meta-trains: smoke's 20
    keep_no_meta_training(cfg, {"debug": None, "experiment": "rfs_omniglot_5w1s"}, [])
    assert cfg.trainer.iterations == 20  # not smoke: the composed config is left alone
    keep_no_meta_training(cfg, {"debug": "smoke", "experiment": "rfs_omniglot_5w1s"}, [])
    assert cfg.trainer.iterations == 0
    assert preset_iterations("best_omniglot_5w1s") == 60000 and preset_iterations("no_such_preset") is None


def test_typed_widths_replace_the_smoke_encoders_width_in_a_run_and_in_its_cfg_check(tmp_path, capsys):
    """configs/debug/encoder/ sets encoder.width: typed encoder.widths would meet it as a conflict never typed."""
    widths = "encoder.widths=[8,8,12,12]"
    assert main(["train", "--cfg", "job", "debug=smoke", widths]) == 0
    said = capsys.readouterr()
    assert "would be refused" not in said.err and "width: 32" in said.out  # Hydra prints the config as composed,
    assert said.err.strip().splitlines() == [  # and the run's change is said beside it
        "metalearn train: note: a run of this config changes what is printed above: debug=smoke: encoder.widths=[8, 8, "
        "12, 12] as typed, in place of the smoke encoder's encoder.width=32"]
    run = tmp_path / "run"
    assert main(["train", "debug=smoke", widths, "trainer.iterations=1", "eval.episodes=2", f"hydra.run.dir={run}"]) == 0
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert list(saved.encoder.widths) == [8, 8, 12, 12] and saved.encoder.width is None
    assert main(["train", "--cfg", "job", "debug=smoke", widths, "encoder.width=16"]) == 2  # both typed: still a conflict
    assert "are both set" in capsys.readouterr().err


def test_smoke_shrinks_the_logistic_solver_that_every_inner_step_refits(capsys):
    """Under the MAML family each inner step refits decoder=logistic and differentiates through the fit: at its 200
    steps a smoke run took minutes. Outside smoke, and when typed, the steps stay as asked."""
    import yaml

    for argv, steps in ((["debug=smoke", "strategy=maml", "decoder=logistic"], 20), (["decoder=logistic"], 200),
                        (["debug=smoke", "decoder=logistic", "decoder.steps=50"], 50)):
        assert main(["train", "--cfg", "job", *argv]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["decoder"]["steps"] == steps
