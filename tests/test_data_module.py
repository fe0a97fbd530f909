"""The DataModule's streams: evaluation sets independent of batch size and process count, seeds."""

import torch

from sbvae.data import EvaluationRows, GroundTruthDataModule, evaluation_set


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
    val, test = ({bytes(x.to(torch.uint8).flatten().numpy()) for x in dm.data.render(dm.validation_factors(p))}
                 for p in (0, 1))
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
