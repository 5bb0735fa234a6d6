"""One seed per image (EDM's generate.py convention): image s is the same whatever batch, position in it,
executor or call form draws it, and eval's samples do not depend on --batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.evaluation.quality import sample_many
from amed_deploy.noise import make_inputs, parse_seeds, seed_range
from amed_deploy.runtime import Sampler
from amed_deploy.sampling import load_model


def test_each_image_has_its_own_generator_noise_first_then_class():
    """EDM's StackedRandomGenerator order: a generator per image draws its noise, then its random class."""
    noise, labels = make_inputs([7, 3], (1, 4, 4), 5)
    for i, seed in enumerate([7, 3]):
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(noise[i], torch.randn((1, 4, 4), generator=gen))
        assert labels[i].argmax() == torch.randint(5, (1,), generator=gen).item()
    mixed_noise, mixed = make_inputs([7, 3], (1, 4, 4), 5, classes=[None, 4])  # a None class stays its seed's
    assert torch.equal(mixed_noise, noise) and mixed[0].argmax() == labels[0].argmax() and mixed[1].argmax() == 4


def test_seed_lists():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7] and parse_seeds("5") == [5]
    assert seed_range(10, 3) == [10, 11, 12]
    for bad in ("3-1", "a", "1,1", "0-2,2", "-1", "0-200000000"):
        with pytest.raises(AmedError):
            parse_seeds(bad)
    with pytest.raises(AmedError, match="2\\^64"):
        seed_range(2**64 - 2, 3)


@pytest.fixture(scope="module")
def samplers(tiny_ckpt, distilled):
    pred = distilled[3]
    return {b: Sampler.load(tiny_ckpt, predictor=pred, batch=b, device="cpu") for b in (1, 3, 4)}


def test_an_image_is_the_same_whatever_the_batch_or_its_place_in_it(samplers):
    four = samplers[4].sample(seeds=[5, 6, 7, 8])
    three = samplers[3].sample(seeds=[8, 5])  # padded to the batch; only these two come back
    one = samplers[1].sample(seeds=[6])
    assert three.images.shape[0] == 2 and three.seeds == [8, 5]
    torch.testing.assert_close(three.images[0], four.images[3], rtol=0, atol=1e-5)
    torch.testing.assert_close(three.images[1], four.images[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(one.images[0], four.images[1], rtol=0, atol=1e-5)
    assert torch.equal(three.labels[0], four.labels[3]) and torch.equal(one.labels[0], four.labels[1])
    assert not torch.allclose(four.images[0], four.images[1])  # different seeds, different images


def test_a_call_seed_is_the_run_of_seeds_from_it(samplers):
    by_seed = samplers[4].sample(seed=10, classes=2)
    by_list = samplers[4].sample(seeds=[10, 11, 12, 13], classes=2)
    assert torch.equal(by_seed.images, by_list.images) and by_seed.seeds == [10, 11, 12, 13]


def test_the_onnx_graph_draws_the_same_images_per_seed(amed_onnx, samplers):
    graph = Sampler.load(amed_onnx, batch=2, device="cpu").sample(seeds=[7, 5])
    ref = samplers[4].sample(seeds=[5, 6, 7, 8])
    torch.testing.assert_close(graph.images[0], ref.images[2], rtol=0, atol=1e-4)
    torch.testing.assert_close(graph.images[1], ref.images[0], rtol=0, atol=1e-4)


def test_sampler_refuses_a_seed_list_it_cannot_draw(samplers):
    with pytest.raises(AmedError, match="batch 3"):
        samplers[3].sample(seeds=[1, 2, 3, 4])
    with pytest.raises(AmedError, match="not both"):
        samplers[3].sample(seed=1, seeds=[1])
    with pytest.raises(AmedError, match="out of range"):
        samplers[3].sample(seeds=[1], classes=[9])


def test_eval_samples_do_not_depend_on_the_batch(tiny_ckpt, distilled):
    network, sampler = load_model(tiny_ckpt, distilled[3]).network, distilled[1]
    a, labels_a = sample_many(network, sampler, 5, batch=2, seed0=3)
    b, labels_b = sample_many(network, sampler, 5, batch=5, seed0=3)
    assert (a.int() - b.int()).abs().max() <= 1  # uint8 images: float rounding may move one level at most
    assert (a != b).float().mean() < 0.01 and np.array_equal(labels_a, labels_b)


def test_run_and_sample_take_one_seed_per_image(tmp_path, tiny_ckpt, distilled, samplers):
    npz = tmp_path / "s.npz"
    args = ["run", "--engine", str(tiny_ckpt), "--predictor", str(distilled[3]), "--device", "cpu"]
    res = CliRunner().invoke(main, [*args, "--seeds", "8,5", "--out", str(tmp_path / "s.png"), "--npz", str(npz)])
    assert res.exit_code == 0, res.output
    assert "seeds 8,5" in res.output and "batch 2" in res.output
    raw = torch.from_numpy(np.load(npz)["raw"])
    ref = samplers[4].sample(seeds=[5, 6, 7, 8]).images
    torch.testing.assert_close(raw, ref[[3, 0]], rtol=0, atol=1e-5)
    res = CliRunner().invoke(main, [*args, "--seeds", "1", "--seed", "2", "--out", str(tmp_path / "t.png")])
    assert res.exit_code == 2 and "not both" in res.output
    # the PyTorch reference command draws the same images for the same seeds
    ref_args = ["sample", "--ckpt", str(tiny_ckpt), "--predictor", str(distilled[3]), "--device", "cpu"]
    res = CliRunner().invoke(
        main, [*ref_args, "--seeds", "8,5", "--out", str(tmp_path / "r.png"), "--npz", str(tmp_path / "r.npz")]
    )
    assert res.exit_code == 0 and "batch 2, seeds 8,5" in res.output, res.output
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "r.npz")["raw"]), ref[[3, 0]], rtol=0, atol=1e-5)
