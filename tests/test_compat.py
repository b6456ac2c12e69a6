"""Files from earlier versions: renamed config keys and tensor names still load."""

import torch
from omegaconf import OmegaConf

from metalearn_cli.config_checks import validate_train_config
from metalearn_cli.model import build_meta_model

EPISODE = {"way": 3, "shot": 1, "query": 1}


def test_a_config_with_the_clip_under_the_strategy_loads_with_it_under_the_optimizer():
    from conftest import compose_config

    saved = OmegaConf.to_container(compose_config("train"), resolve=True, enum_to_str=True)
    saved["optimizer"].pop("clip")
    saved["strategy"]["clip"] = {"norm": 3.0, "value": None}
    cfg = validate_train_config(saved)
    assert cfg.optimizer.clip.norm == 3.0 and "clip" not in cfg.strategy


def test_old_tensor_names_of_the_latent_decoder_and_the_transformer_load():
    cfg = OmegaConf.create({"encoder": {"name": "transformer", "width": 16, "depth": 1, "heads": 2, "patch": 7, "stem": "patch"},
                            "decoder": {"name": "latent", "latent_dim": 4}, "episode": EPISODE})
    model = build_meta_model(cfg, (1, 28, 28))
    renames = {"decoder.code_encoder.": "decoder.encoder.", "decoder.weight_decoder.": "decoder.decoder.",
               "encoder.blocks.": "encoder.encoder."}
    old = {}
    for key, value in model.state_dict().items():
        for new, former in renames.items():
            key = key.replace(new, former) if key.startswith(new) else key
        old[key] = value + 1
    assert any(k.startswith("decoder.decoder.") for k in old) and any(k.startswith("encoder.encoder.") for k in old)
    fresh = build_meta_model(cfg, (1, 28, 28))
    fresh.load_state_dict(old)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value + 1), key


def test_a_transformer_run_saved_before_the_conv_stem_keeps_its_patch_stem():
    from metalearn_cli.compat import migrate_config

    old = {"encoder": {"name": "transformer", "patch": 4}, "trainer": {"iterations": 5}}
    new = migrate_config(old)
    assert new["encoder"]["stem"] == "patch" and new["pretrain"]["iterations"] == 0
    assert new["trainer"]["freeze_encoder"] is False
    assert migrate_config({"encoder": {"name": "conv4"}})["encoder"] == {"name": "conv4"}


def test_runs_saved_before_episodic_pretraining_read_as_supervised_with_names_not_enums():
    """A config written before pretrain.kind (or before the stage) resumes and compares as the string a
    new run saves: a supervised stage, its new episodic keys at their defaults."""
    from metalearn_cli.compat import migrate_config

    for old in ({"trainer": {"iterations": 5}}, {"trainer": {"iterations": 5}, "pretrain": {"iterations": 0, "augment": "auto"}}):
        pretrain = migrate_config(old)["pretrain"]
        assert (pretrain["kind"], pretrain["augment"], pretrain["train_way"]) == ("supervised", "auto", 60)
        assert all(not hasattr(v, "value") for v in pretrain.values())  # no enum objects


def test_a_run_saved_before_test_time_augmentation_loads_without_it():
    from conftest import compose_config

    saved = OmegaConf.to_container(compose_config("train"), resolve=True, enum_to_str=True)
    saved["eval"].pop("tta_shift")
    assert validate_train_config(saved).eval.tta_shift == 0


def test_a_maml_run_saved_before_adapt_norm_and_inner_loss_reads_with_the_defaults_it_ran_with():
    """Without them a resume with strategy= on the command line was refused ("trained with strategy.adapt_norm=None"),
    and compare put the run beside a new one of the same recipe as another setting (review 41)."""
    from metalearn_cli.compat import migrate_config

    old = {"trainer": {}, "strategy": {"name": "anil", "inner_lr": 0.1, "adapt": "head"}}
    strategy = migrate_config(old)["strategy"]
    assert (strategy["adapt_norm"], strategy["inner_loss"], strategy["inner_lr"], strategy["adapt"]) == (True, "mean", 0.1, "head")
    assert migrate_config({"strategy": {"name": "mgd"}})["strategy"]["name"] == "mgd"
