"""The DataModule's streams: evaluation sets independent of batch size and process count, seeds."""

import torch

from sbvae.data import EvaluationRows, GroundTruthDataModule


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
    assert set(val_rows.tolist()).isdisjoint(test_rows.tolist())
    assert not torch.equal(dm.validation_factors(0), dm.validation_factors(1))


def test_training_seed_follows_seed_everything(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert GroundTruthDataModule(image_size=16).hparams.seed == 7
    assert GroundTruthDataModule(image_size=16, seed=3).hparams.seed == 3
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert GroundTruthDataModule(image_size=16).hparams.seed == 0


def test_training_batch_is_keyed_by_seed_rank_and_step():
    dm = GroundTruthDataModule(image_size=16, batch_size=8)
    batch = lambda seed, rank, step: dm.training_batch(seed, rank, torch.tensor(step), "cpu")
    base = batch(0, 0, 0)
    assert torch.equal(base, batch(0, 0, 0))
    for other in (batch(1, 0, 0), batch(0, 1, 0), batch(0, 0, 1)):
        assert not torch.equal(base, other)
