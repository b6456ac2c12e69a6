"""Exported meta-knowledge and the Python API: load, adapt to a new task, classify queries."""

from __future__ import annotations

import pytest
import torch

import metalearn_cli
from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.errors import CheckpointError, ConfigError, DataError
from metalearn_cli.checkpoint import read_meta_knowledge
from metalearn_cli.export import export
from metalearn_cli.knowledge import load
from metalearn_cli.training import train
from conftest import FAST, compose_config, write_image_task


def test_export_holds_the_meta_knowledge_alone_and_loads_safely(trained_run, tmp_path):
    out = tmp_path / "mk.pt"
    export(trained_run / "checkpoints" / "best.pt", out)
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state["format"] == "metalearn-meta-knowledge"
    assert not {"optimizer", "rng", "sampler", "schedule"} & set(state)
    assert state["image_format"] == {"channels": 1, "size": 28, "resample": "bilinear", "invert": False, "normalise": "none"}
    ckpt = torch.load(trained_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(state["model"][k], ckpt["model"][k]) for k in ckpt["model"])


def test_export_and_checkpoint_give_the_same_classifier(trained_run, tmp_path):
    export(trained_run, tmp_path / "mk.pt")
    names = write_image_task(tmp_path / "task", classes=4, support=(1, 3))
    files = sorted((tmp_path / "task" / "query").rglob("*.png"))
    a, b = metalearn_cli.load(tmp_path / "mk.pt", "cpu"), metalearn_cli.load(trained_run, "cpu")
    support = sorted((tmp_path / "task" / "support").rglob("*.png"))
    labels = [names.index(p.parent.name) for p in support]
    pa = a.adapt(a.read_images(support), labels)(a.read_images(files))
    pb = b.adapt(support, labels)(files)  # paths straight in: converted the same way
    assert pa.shape == (len(files), 4) and torch.allclose(pa, pb)
    assert torch.allclose(pa.sum(-1), torch.ones(len(files)))


def test_a_prototype_classifier_puts_each_single_shot_support_image_in_its_own_class(trained_run):
    knowledge = load(trained_run, "cpu")
    data = compose_config("train", FAST)
    from metalearn_cli.data import DATASETS

    test = DATASETS.build(data.dataset).test
    batch = EpisodeSampler(test, 5, 1, 1, seed=3).sample(1)
    classify = knowledge.adapt(batch.support_images[0], batch.support_labels[0])
    assert classify(batch.support_images[0]).argmax(-1).tolist() == batch.support_labels[0].tolist()
    # Queries from the held-out test classes: twice chance (1/5) or more after a short training, on 300
    # queries (at chance, P(accuracy >= 0.4) < 1e-10), whatever the precision (bf16 or fp32).
    queries = EpisodeSampler(test, 5, 1, 3, seed=4).sample(100)
    correct = sum((knowledge.adapt(queries.support_images[t], queries.support_labels[t])(queries.query_images[t])
                   .argmax(-1) == queries.query_labels[t]).float().mean() for t in range(100)) / 100
    print(f"accuracy {float(correct):.3f}")
    assert correct >= 0.4


def test_metasgd_learned_learning_rates_travel_with_the_export(tmp_path):
    run = tmp_path / "run"
    train(compose_config("train", FAST + ["strategy=metasgd", "decoder=linear", "trainer.iterations=2"]), run)
    export(run, tmp_path / "mk.pt")
    state = torch.load(tmp_path / "mk.pt", weights_only=True)
    lrs = {k: v for k, v in state["model"].items() if k.startswith("inner_lrs.")}
    assert lrs and any(not torch.all(v == 0.4) for v in lrs.values())  # meta-trained, not the initial value
    knowledge = load(tmp_path / "mk.pt", "cpu")
    assert all(torch.equal(knowledge.strategy.state_dict()[k], v) for k, v in lrs.items())
    assert knowledge.max_way == 5
    support = torch.rand(6, 1, 28, 28)
    assert knowledge.adapt(support, [0, 0, 1, 1, 2, 2])(torch.rand(4, 1, 28, 28)).shape == (4, 3)
    with pytest.raises(ConfigError, match="at most 5 classes"):
        knowledge.adapt(torch.rand(6, 1, 28, 28), [0, 1, 2, 3, 4, 5])


def test_bad_tasks_and_tampered_files_are_one_line_errors(trained_run, tmp_path):
    knowledge = load(trained_run, "cpu")
    with pytest.raises(DataError, match="an image of every class; class 1 has none"):
        knowledge.adapt(torch.rand(3, 1, 28, 28), [0, 2, 2])
    with pytest.raises(DataError, match="at least 2 classes; these support labels name 1"):
        knowledge.adapt(torch.rand(2, 1, 28, 28), [0, 0])
    with pytest.raises(DataError, match=r"support label 2 means 3 classes, but there are 2 images.*\(they start at 0\)"):
        knowledge.adapt(torch.rand(2, 1, 28, 28), [1, 2])
    with pytest.raises(DataError, match="support label 1000000000000 means"):  # said before a count of that length
        knowledge.adapt(torch.rand(2, 1, 28, 28), [0, 10**12])
    with pytest.raises(DataError, match="support labels must be 0..N-1; got -1"):
        knowledge.adapt(torch.rand(3, 1, 28, 28), [-1, 0, 1])
    with pytest.raises(DataError, match="one label per image"):
        knowledge.adapt(torch.rand(2, 1, 28, 28), [0, 1, 1])
    with pytest.raises(DataError, match=r"images must be \[n, 1, 28, 28\]"):
        knowledge.adapt(torch.rand(2, 3, 28, 28), [0, 1])
    state = read_meta_knowledge(trained_run)
    bad = {**state, "model": {k: v for i, (k, v) in enumerate(state["model"].items()) if i}}
    with pytest.raises(CheckpointError, match="does not match its own config's meta-network"):
        load(bad, "cpu")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable metalearn checkpoint"):
        load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="neither a metalearn checkpoint nor an exported"):
        load(tmp_path / "foreign.pt")
    raw = torch.load(trained_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert load(raw, "cpu").source is None  # a file's contents, read by the user: checked as the file would be
    for damaged, needle in (({}, "neither a metalearn checkpoint"), ({**raw, "image_format": {"channels": 7}},
                                                                      "image format or its config's data set is unusable")):
        with pytest.raises(CheckpointError, match=needle):
            load(damaged, "cpu")
    with pytest.raises(ConfigError, match=r"load\(\.\.\., device='meta'\) is not supported"):  # checked by its name
        load(trained_run, torch.device("meta"))  # and spelt as Python, not as the command line's device=meta
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"use load\(\.\.\., device='auto'\) or load\(\.\.\., device='cpu'\)"):
            load(trained_run, "cuda")


def test_images_that_look_inverted_get_a_warning(trained_run, caplog):
    knowledge = load(trained_run, device="cpu")
    assert knowledge.pixel_mean is not None  # saved by the training run
    knowledge.pixel_mean = 0.1  # as for Omniglot: white strokes on black, as the model sees them
    assert not knowledge.warn_if_inverted(torch.full((4, 1, 28, 28), 0.12))
    assert not knowledge.warn_if_inverted(torch.full((4, 1, 28, 28), 0.45))
    with caplog.at_level("WARNING"):
        assert knowledge.warn_if_inverted(torch.full((4, 1, 28, 28), 0.9))
    assert "look inverted" in caplog.text
    knowledge.pixel_mean = 0.49  # training images of no clear polarity (generated ones): nothing is inverted to them
    assert not knowledge.warn_if_inverted(torch.full((4, 1, 28, 28), 0.94))


def test_queries_are_checked_against_training_and_against_the_support(trained_run, caplog):
    knowledge = load(trained_run, device="cpu")
    knowledge.pixel_mean = 0.1  # the model saw dark images (white strokes on black)
    dark = torch.rand(3, 1, 28, 28) * 0.2
    bright = 1 - dark
    with caplog.at_level("WARNING"):
        knowledge.adapt(dark, [0, 1, 2])(dark)
    assert "inverted" not in caplog.text
    with caplog.at_level("WARNING"):
        knowledge.adapt(dark, [0, 1, 2])(bright)  # support fine, queries inverted: warned
    assert "the query images look inverted against the training data" in caplog.text
    caplog.clear()
    knowledge.pixel_mean = None  # an older checkpoint: no training brightness, the support is the reference
    with caplog.at_level("WARNING"):
        knowledge.adapt(dark, [0, 1, 2])(bright)
    assert "the query images look inverted against the support images" in caplog.text


def test_flat_images_are_named(trained_run, caplog):
    knowledge = load(trained_run, device="cpu")
    with caplog.at_level("WARNING"):
        assert knowledge.check_images(torch.cat([torch.full((2, 1, 28, 28), 0.3), torch.rand(1, 1, 28, 28)]), "query") == 2
    assert "2 of 3 query images are nearly one flat value" in caplog.text


def test_one_path_or_image_alone_is_read_as_one_image(trained_run, tmp_path):
    from PIL import Image

    knowledge = load(trained_run, device="cpu")
    Image.new("L", (40, 40), 255).save(tmp_path / "a.png")
    for one in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.open(tmp_path / "a.png")):
        assert knowledge.read_images(one).shape == (1, 1, 28, 28)
    assert torch.equal(knowledge.as_pixels(str(tmp_path / "a.png")), knowledge.as_pixels([tmp_path / "a.png"]))


def test_predict_tests_as_the_run_did_with_its_test_time_augmentation(trained_run):
    """A checkpoint whose config says ``eval.tta_shift=2`` classifies with the shifted copies (and with
    ``eval.tta_rotate``, the turned ones): other probabilities than the same weights without them."""
    from omegaconf import OmegaConf

    from metalearn_cli.data import DATASETS

    test = DATASETS.build(compose_config("train", FAST).dataset).test
    batch = EpisodeSampler(test, 5, 1, 3, seed=3).sample(1)
    knowledge = load(trained_run, "cpu")
    assert knowledge.config.eval.tta_shift == 0
    plain = knowledge.adapt(batch.support_images[0], batch.support_labels[0])(batch.query_images[0])
    OmegaConf.update(knowledge.config, "eval.tta_shift", 2)
    shifted = knowledge.adapt(batch.support_images[0], batch.support_labels[0])(batch.query_images[0])
    assert not torch.allclose(plain, shifted) and len(knowledge.strategy.model.views) == 1
    OmegaConf.update(knowledge.config, "eval.tta_rotate", 10.0)  # the turned copies too
    turned = knowledge.adapt(batch.support_images[0], batch.support_labels[0])(batch.query_images[0])
    assert not torch.allclose(turned, shifted) and len(knowledge.strategy.model.views) == 1


def test_images_and_labels_in_an_ambiguous_form_are_refused_not_guessed(trained_run):
    """0-255 in int64 or float reads as far too bright if taken for [0, 1]: refused, as are NaN pixels,
    labels that are names, and a load() of something that is not a path."""
    import numpy as np

    knowledge = load(trained_run, "cpu")
    pixels = (torch.rand(2, 1, 28, 28) * 255).round()
    with pytest.raises(DataError, match="dtype torch.int64: give uint8"):
        knowledge.adapt(pixels.long(), [0, 1])
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\]; these span"):
        knowledge.adapt(pixels, [0, 1])
    with pytest.raises(DataError, match="NaN or infinite"):
        knowledge.adapt(torch.full((2, 1, 28, 28), float("nan")), [0, 1])
    for labels in (["cat", "dog"], [0.4, 1.2], torch.tensor([0.9, 1.1]), torch.tensor([True, False]), [[0], [1]]):
        with pytest.raises(DataError, match="support labels must be integers"):  # never cast into another task
            knowledge.adapt(pixels.to(torch.uint8), labels)
    assert knowledge.adapt(pixels.to(torch.uint8), torch.tensor([0.0, 1.0]))(pixels / 255).shape == (2, 2)  # whole floats
    with pytest.raises(CheckpointError, match="got a numpy.ndarray"):
        load(np.zeros(3))
    assert knowledge.adapt(pixels.to(torch.uint8), [0, 1])(pixels / 255).shape == (2, 2)  # the two accepted forms


def test_a_transductive_protocol_is_said_once_by_the_python_api(tmp_path, caplog):
    run = tmp_path / "maml"
    train(compose_config("train", FAST + ["strategy=fomaml", "decoder=linear", "trainer.iterations=2"]), run)
    knowledge = load(run, "cpu")
    for _ in range(2):
        knowledge.adapt(torch.rand(2, 1, 28, 28), [0, 1])(torch.rand(3, 1, 28, 28))
    said = [r for r in caplog.records if "each query's answer depends on the queries normalised with it" in r.getMessage()]
    assert knowledge.bn_mode == "transductive" and len(said) == 1


def test_pixels_come_as_a_tensor_an_array_or_a_list_of_tensors_and_other_inputs_are_one_line(trained_run, tmp_path, caplog):
    import io

    import numpy as np
    from PIL import Image

    knowledge = load(trained_run, "cpu")
    pixels = (torch.rand(2, 1, 28, 28) * 255).to(torch.uint8)
    want = knowledge.adapt(pixels, [0, 1])(pixels)
    assert torch.equal(knowledge.adapt(pixels.numpy(), [0, 1])(list(pixels)), want)  # the same task, other containers
    assert knowledge.adapt(pixels.numpy()[:, :, ::-1], [0, 1])(pixels).shape == (2, 2)  # a flipped view: copied
    with pytest.raises(DataError, match="an array of dtype object is no pixels"):
        knowledge.adapt(np.empty((2, 1, 28, 28), dtype=object), [0, 1])
    with pytest.raises(DataError, match="tensors and arrays are pixels already: give them to adapt"):
        knowledge.read_images(pixels)
    with pytest.raises(DataError, match=r"got a Tensor among them \(stack tensors into one"):
        knowledge.read_images([tmp_path / "a.png", pixels[1]])
    for wrong in (None, 5):
        with pytest.raises(DataError, match="images must be image files .*, PIL images or a tensor; got"):
            knowledge.adapt(wrong, [0, 1])
    with pytest.raises(DataError, match=r"the image tensors differ in shape; each must be \[1, 28, 28\]"):
        knowledge.adapt([pixels[0], pixels[0, :, :20]], [0, 1])
    buffer = io.BytesIO()
    Image.fromarray(pixels[0, 0].numpy()).save(buffer, format="PNG")
    buffer.seek(0)
    assert knowledge.read_images(buffer).shape == (1, 1, 28, 28)  # an open file alone is one image, as a path is
    knowledge.pixel_mean = 0.1  # as for Omniglot: white strokes on black once converted
    with caplog.at_level("WARNING"):
        knowledge.adapt(torch.full((2, 1, 28, 28), 0.9), [0, 1])  # dark strokes on white, given as pixels
    assert "tensors are used as given, so give them converted: [n, 1, 28, 28]" in caplog.text
    base = 30 if knowledge.image_format.invert else 200  # bright once converted, against the training images' 0.1
    Image.fromarray((base + np.random.default_rng(0).integers(0, 50, (28, 28))).astype(np.uint8)).save(tmp_path / "dark.png")
    caplog.clear()  # files read by read_images (as predict reads them): the advice is about the files, not tensors
    with caplog.at_level("WARNING"):
        read = knowledge.read_images([tmp_path / "dark.png"] * 2)
        knowledge.adapt(read, [0, 1])
    assert "images look inverted" in caplog.text and "tensors are used as given" not in caplog.text, caplog.text
    assert "give images of the training images' polarity" in caplog.text
    assert np.isclose(float(knowledge.adapt(pixels, [0, 1])(pixels.float().requires_grad_() / 255).sum()), 2.0, atol=1e-4)
