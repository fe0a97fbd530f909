"""The DataModule's streams: evaluation sets independent of batch size and process count, seeds."""

import types

import pytest
import torch

from metric_fakes import FactorData
from sbvae.data import EvaluationRows, GroundTruthDataModule, evaluation_set, stream_seed
from sbvae.datasets.registry import available
from sbvae.errors import SBVAEError


def eval_images(dm, purpose=0, rank=0, world=1):
    factors = dm.validation_factors(purpose)
    rows = EvaluationRows(factors, purpose * len(factors), dm.hparams.batch_size, lambda: (rank, world))
    images, numbers = [], []
    for f, r in rows:
        images.append(dm.render_fixed(f, r))
        numbers.append(r)
    return torch.cat(images), torch.cat(numbers)


def test_validation_images_do_not_depend_on_batch_size():
    small = GroundTruthDataModule(image_size=16, batch_size=4, val_size=12)
    large = GroundTruthDataModule(image_size=16, batch_size=8, val_size=12)
    a, rows_a = eval_images(small)
    b, rows_b = eval_images(large)
    assert torch.equal(rows_a, torch.arange(12)) and torch.equal(rows_a, rows_b)
    assert torch.equal(a, b)


def test_processes_share_the_evaluation_set_without_padding():
    dm = GroundTruthDataModule(image_size=16, batch_size=4, val_size=11)
    whole, _ = eval_images(dm)
    parts = [eval_images(dm, rank=r, world=3) for r in range(3)]
    rows = torch.cat([p[1] for p in parts])
    assert sorted(rows.tolist()) == list(range(11))  # every row once, none repeated
    for images, numbers in parts:
        assert torch.equal(images, whole[numbers])


def test_test_set_is_not_the_validation_set():
    dm = GroundTruthDataModule(image_size=16, batch_size=4, val_size=64)
    val, val_rows = eval_images(dm, 0)
    test, test_rows = eval_images(dm, 1)
    assert torch.equal(val_rows, torch.arange(64)) and torch.equal(test_rows, torch.arange(64, 128))
    assert len(test) == len(val) == 64


def test_validation_and_test_split_the_factor_combinations():
    # 16 cells and 200 rows each: two independent draws would share every cell.
    dm = GroundTruthDataModule("circles-xy", dataset_options={"grid": 4}, image_size=16, val_size=200)
    val, test = ({tuple(row) for row in dm.validation_factors(p).tolist()} for p in (0, 1))
    assert val.isdisjoint(test)
    assert len(val | test) == 16 and len(val) >= 4 and len(test) >= 4  # both halves used, all of each


def test_dsprites_validation_and_test_share_no_image():
    # 4096 rows each of 737,280 combinations: independent draws would share about 23 images.
    dm = GroundTruthDataModule("dsprites", image_size=64, val_size=4096)
    val, test = (
        {bytes(x.to(torch.uint8).flatten().numpy()) for x in dm.data.render(dm.validation_factors(p))} for p in (0, 1)
    )
    assert len(val) > 4000 and len(test) > 4000 and val.isdisjoint(test)
    # Orientation 2 pi is drawn as orientation 0: the two indices are one image, so they go to one set.
    rows = dm.data.sample_factors(500, torch.Generator().manual_seed(0))
    zero, full_turn = rows.clone(), rows.clone()
    zero[:, 2], full_turn[:, 2] = 0, 39
    assert torch.equal(dm.data.render(zero), dm.data.render(full_turn))
    assert torch.equal(evaluation_set(dm.data, zero), evaluation_set(dm.data, full_turn))
    assert 0.4 < evaluation_set(dm.data, rows).float().mean() < 0.6


def test_training_seed_follows_seed_everything(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert GroundTruthDataModule(image_size=16).hparams.seed == 7
    assert GroundTruthDataModule(image_size=16, seed=3).hparams.seed == 3
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert GroundTruthDataModule(image_size=16).hparams.seed == 0


def test_training_batch_is_keyed_by_seed_rank_and_step():
    # One colour bin: a sprite's shape and place come from the factor stream, its colour from the render stream.
    dm = GroundTruthDataModule(dataset_options={"color_bins": 1}, image_size=16, batch_size=8)

    def parts(seed, rank, step):
        x = dm.training_batch(seed, rank, torch.tensor(step), "cpu")
        return x.amax(1) > 0, x.flatten(2).amax(2)  # masks, colours

    base = parts(0, 0, 0)
    assert all(torch.equal(a, b) for a, b in zip(base, parts(0, 0, 0)))
    for other in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        masks, colours = parts(*other)
        assert not torch.equal(masks, base[0]) and not torch.equal(colours, base[1]), other


def test_loaders_carry_the_fixed_sets_and_placeholder_ticks():
    dm = GroundTruthDataModule(image_size=16, batch_size=4, val_size=10, steps_per_epoch=3)
    for loader, purpose in ((dm.val_dataloader(), 0), (dm.test_dataloader(), 1)):
        batches = list(loader)
        assert len(loader) == len(batches) == 3  # 10 rows in batches of 4
        assert torch.equal(torch.cat([f for f, _ in batches]), dm.validation_factors(purpose))
        assert torch.equal(torch.cat([r for _, r in batches]), torch.arange(10 * purpose, 10 * purpose + 10))
        images, rows = dm.on_after_batch_transfer(batches[0], 0)  # what a validation step receives
        assert torch.equal(rows, batches[0][1]) and torch.equal(images, dm.render_fixed(*batches[0]))
    ticks = list(dm.train_dataloader())
    assert len(dm.train_dataloader()) == len(ticks) == 3 and all(t.numel() == 0 for t in ticks)
    assert dm.on_after_batch_transfer(ticks[0], 0) is ticks[0]
    assert torch.equal(dm.validation_factors(), dm.validation_factors(0))


def test_a_process_takes_every_world_th_row_under_a_trainer():
    """Process 1 of 3 under DDP; a replica-parallel process (its strategy samples as one process) takes all."""
    dm = GroundTruthDataModule(image_size=16, batch_size=2, val_size=10)
    sampling = lambda kwargs: types.SimpleNamespace(strategy=types.SimpleNamespace(distributed_sampler_kwargs=kwargs))
    dm.trainer = sampling({"num_replicas": 3, "rank": 1})
    assert torch.cat([r for _, r in dm.test_dataloader()]).tolist() == [11, 14, 17]
    from sbvae.replicas import ReplicaParallelStrategy

    dm.trainer = sampling(ReplicaParallelStrategy.distributed_sampler_kwargs.fget(None))
    assert torch.cat([r for _, r in dm.test_dataloader()]).tolist() == list(range(10, 20))
    dm.trainer = types.SimpleNamespace(strategy=types.SimpleNamespace())  # one device: no sampler arguments
    assert torch.cat([r for _, r in dm.test_dataloader()]).tolist() == list(range(10, 20))


def test_evaluation_images_are_jittered_by_row_and_val_seed():
    # Colour is drawn inside its bin from a stream keyed by (val_seed, row): not the bin centre.
    dm, other = (GroundTruthDataModule(image_size=16, val_size=8, val_seed=s) for s in (12345, 7))
    factors, rows = dm.validation_factors(), torch.arange(8)
    images = dm.render_fixed(factors, rows)
    assert not torch.equal(images, dm.data.render(factors))
    assert not torch.equal(images, other.render_fixed(factors, rows))
    assert not torch.equal(dm.validation_factors(), other.validation_factors())


@pytest.mark.parametrize("name", [n for n in available() if n not in ("shapes3d", "chairs")])  # those two need files
def test_a_block_of_steps_is_each_steps_batch_to_the_bit(name):
    """The CPU engine draws several steps at once: every generator must give each step's batch exactly
    (batch 3: rows that do not fill a vector register take the scalar tail of each kernel)."""
    dm = GroundTruthDataModule(name, image_size=16, batch_size=3)
    seeds, steps = torch.tensor([4, 9]), torch.tensor([2, 3, 4, 5, 6])
    block = dm.training_batch(seeds, 0, steps, "cpu").unflatten(0, (2, 5, 3))
    for r, seed in enumerate(seeds.tolist()):
        for k, step in enumerate(steps.tolist()):
            assert torch.equal(block[r, k], dm.training_batch(seed, 0, step, "cpu")), (seed, step)


def test_training_batch_sizes_and_int_steps():
    dm = GroundTruthDataModule(image_size=16, batch_size=4)
    one = dm.training_batch(3, 0, 5, "cpu")  # a plain int step equals the device-tensor step
    assert one.shape == (4, 3, 16, 16) and torch.equal(one, dm.training_batch(3, 0, torch.tensor(5), "cpu"))
    stacked = dm.training_batch(torch.tensor([3, 4]), 0, 5, "cpu")  # replica seeds: one chunk per seed
    assert stacked.shape[0] == 8 and torch.equal(stacked[:4], one)


def test_stream_seeds_are_63_bit_and_keyed():
    seeds = [stream_seed(purpose, 12345, k) for purpose in range(4) for k in range(50)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert max(seeds) >= 2**62  # the top bit is used: a 63-bit seed, not a narrower one
    assert stream_seed(1, 2) != stream_seed(2, 1)


def test_evaluation_sets_have_val_size_rows_when_their_half_is_small():
    # circles-xy on a 2 x 2 grid gives validation 1 of the 4 cells: a quarter of each round of draws is kept,
    # so most sizes need several rounds, and a miscount between rounds would come up short.
    dm = GroundTruthDataModule("circles-xy", dataset_options={"grid": 2}, image_size=8, val_size=1)
    for size in range(1, 300):
        dm.hparams.val_size = size
        assert len(dm.validation_factors(0)) == len(dm.validation_factors(1)) == size


def test_a_dataset_too_small_to_split_says_so():
    dm = GroundTruthDataModule(image_size=16)
    dm.data = FactorData((1,))  # one combination: it is validation's, so test has none
    assert dm.validation_factors(0).tolist() == [[0]] * dm.hparams.val_size
    with pytest.raises(SBVAEError, match="too few factor combinations"):
        dm.validation_factors(1)
