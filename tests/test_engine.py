"""The training engine: equal to a plain PyTorch step, keyed randomness, divergence without host syncs."""

import copy
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from sbvae import keyed
from sbvae.data import GroundTruthDataModule
from sbvae.engine import Engine, draw_ahead_for
from sbvae.errors import SBVAEError
from sbvae.factorvae import FactorVAE
from sbvae.module import VAE
from test_training import TINY, final_weights, fit, run_dirs

SMALL = dict(
    image_size=16, channels=3, encoder_options={"channels": [8] * 4, "hidden": 32}, decoder_options={"channels": [8, 8]}
)


def tiny_data(batch_size=8):
    return GroundTruthDataModule("colored-sprites", image_size=16, batch_size=batch_size, seed=5)


def make_engine(model, dm, seed=5, mode="eager", start_step=0, draw_ahead=1):
    optimizers = model.configure_optimizers()
    optimizers = list(optimizers) if isinstance(optimizers, tuple) else [optimizers]
    draw = lambda step: dm.training_batch(seed, 0, step, torch.device("cpu"))
    model.engine = Engine(
        model,
        optimizers,
        draw,
        seed=seed,
        rank=0,
        mode=mode,
        start_step=start_step,
        device=torch.device("cpu"),
        draw_ahead=draw_ahead,
    )
    return model.engine, optimizers


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_engine_step_equals_a_plain_pytorch_step():
    torch.manual_seed(0)
    model, plain = VAE(beta=2.0, **SMALL), VAE(beta=2.0, **SMALL)
    plain.load_state_dict(model.state_dict())
    dm = tiny_data()
    engine, _ = make_engine(model, dm)
    adam = torch.optim.Adam(plain.parameters(), lr=plain.hparams.lr)
    for step in range(3):
        engine.step()
        # What a user writes by hand, fed the same keyed images and noise.
        x = dm.training_batch(5, 0, step, torch.device("cpu"))
        noise = keyed.stream(keyed.POSTERIOR, 5, 0, step).normal((8, 10))
        nll, kl, _, _ = plain.per_image_terms(x, noise)
        loss = nll.mean() + 2.0 * kl.mean()
        adam.zero_grad()
        loss.backward()
        adam.step()
        torch.testing.assert_close(engine.terms["loss"], loss.detach(), rtol=1e-6, atol=1e-5)
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_consecutive_steps_draw_new_images_and_noise():
    dm = tiny_data()
    a, b = dm.training_batch(5, 0, torch.tensor(0), "cpu"), dm.training_batch(5, 0, torch.tensor(1), "cpu")
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, dm.training_batch(5, 0, torch.tensor(0), "cpu"), rtol=0, atol=0)
    n0 = keyed.stream(keyed.POSTERIOR, 5, 0, torch.tensor(0)).normal((8, 10))
    n1 = keyed.stream(keyed.POSTERIOR, 5, 0, torch.tensor(1)).normal((8, 10))
    assert not torch.equal(n0, n1)
    other_rank = dm.training_batch(5, 1, torch.tensor(0), "cpu")
    assert not torch.equal(a, other_rank)


def test_replica_chunks_equal_single_seed_draws():
    dm = tiny_data(batch_size=4)
    stacked = dm.training_batch(torch.tensor([3, 4, 5]), 0, torch.tensor(2), "cpu")
    for k, seed in enumerate((3, 4, 5)):
        assert torch.equal(stacked[4 * k : 4 * k + 4], dm.training_batch(seed, 0, torch.tensor(2), "cpu"))


def test_keyed_uniforms_are_uniform_and_normals_normal():
    u = keyed.stream(0, 1, 0, 0).rand((200_000,))
    assert 0 < u.min() and u.max() < 1
    counts = torch.histc(u, 20, 0, 1)
    assert (counts - 10_000).abs().max() < 5 * 100  # 5 sigma of a binomial(200000, 1/20)
    z = keyed.stream(1, 1, 0, 0).normal((200_000,))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z.abs() < 1).float().mean() - 0.6827) < 0.005


def test_a_nan_step_never_updates_weights_and_freezes_the_model():
    torch.manual_seed(0)
    model = VAE(**SMALL)
    engine, optimizers = make_engine(model, tiny_data())
    engine.step()
    engine.step()
    before = snapshot(model)
    adam_before = {k: v.clone() for k, v in optimizers[0].state_dict()["state"][0].items()}
    real = model.loss_terms
    model.loss_terms = lambda x, noise: {**real(x, noise), "loss": real(x, noise)["loss"] * float("nan")}
    engine.step()  # step 2: nan
    model.loss_terms = real
    engine.step()  # step 3 is finite, but the run is frozen
    assert engine.first_bad_step()[0] == 2
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    for k, v in optimizers[0].state_dict()["state"][0].items():
        assert torch.equal(v, adam_before[k]), k
    with pytest.raises(Exception, match="diverged at step 2 \\(loss = nan\\)"):
        model.sync_divergence()


def test_a_divergence_keeps_the_loss_of_its_own_step_in_one_buffer():
    """The divergence record is written in place (a CUDA graph replays into the buffer it captured) and
    keeps the first bad step's terms, not a later step's."""
    torch.manual_seed(0)
    model = VAE(**SMALL, max_loss=1e6)
    engine, _ = make_engine(model, tiny_data())
    engine.step()
    buffer = engine.bad_values
    engine.step()
    real = model.loss_terms
    model.loss_terms = lambda x, noise: {
        **real(x, noise),
        "loss": real(x, noise)["loss"] * 1e7,
    }  # finite, above max_loss
    engine.step()  # step 2 diverges
    bad_loss = float(engine.terms["loss"])
    model.loss_terms = lambda x, noise: {**real(x, noise), "loss": real(x, noise)["loss"] * 1e8}
    engine.step()  # a later bad step does not overwrite the first
    assert engine.bad_values is buffer
    step, values = engine.first_bad_step()
    assert step == 2 and values["loss"] == pytest.approx(bad_loss, rel=1e-6) and bad_loss > 1e6
    with pytest.raises(Exception, match=re.escape(f"diverged at step 2 (loss = {bad_loss:.4g})")):
        model.sync_divergence()


def test_an_unindexed_cuda_device_is_the_current_one(monkeypatch):
    """Tensors report cuda:0, never plain cuda: an engine on "cuda" must hold "cuda:0", or its divergence guard
    finds no optimiser state of its device to snapshot."""
    from sbvae.engine import normalised_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert normalised_device("cuda") == torch.device("cuda", 1) and normalised_device(
        torch.device("cuda:0")
    ) == torch.device("cuda:0")
    assert normalised_device("cpu") == torch.device("cpu")
    assert torch.device("cuda") != torch.device("cuda:0")  # why


def test_a_first_step_nan_leaves_adam_as_new():
    torch.manual_seed(0)
    model = VAE(**SMALL, max_loss=1.0)  # every loss explodes
    before = snapshot(model)
    engine, optimizers = make_engine(model, tiny_data())
    engine.step()
    assert engine.first_bad_step()[0] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert float(optimizers[0].state_dict()["state"][0]["step"]) == 0.0


def test_resumed_engine_continues_the_same_streams():
    torch.manual_seed(0)
    a = VAE(**SMALL)
    b = VAE(**SMALL)
    b.load_state_dict(a.state_dict())
    ea, oa = make_engine(a, tiny_data())
    for _ in range(4):
        ea.step()
    eb, ob = make_engine(b, tiny_data())
    for _ in range(2):
        eb.step()
    # "Kill" after step 2 and resume from a copy of the state, as a checkpoint would.
    c = VAE(**SMALL)
    c.load_state_dict(b.state_dict())
    ec, oc = make_engine(c, tiny_data(), start_step=2)
    oc[0].load_state_dict(ob[0].state_dict())
    for _ in range(2):
        ec.step()
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k


@pytest.mark.parametrize("model_class", [VAE, FactorVAE])
def test_drawing_steps_in_blocks_trains_exactly_as_one_step_at_a_time(model_class):
    """On the CPU the engine draws the inputs of several steps at once; a run started mid-block (a resume)
    must get the very numbers of one step at a time, images, noise and FactorVAE's permutations alike."""
    options = dict(disc_hidden=16, disc_layers=2) if model_class is FactorVAE else {}
    torch.manual_seed(0)
    one, blocked = model_class(**SMALL, **options), model_class(**SMALL, **options)
    blocked.load_state_dict(one.state_dict())
    dm = tiny_data()
    engines = [make_engine(one, dm, start_step=3)[0], make_engine(blocked, dm, start_step=3, draw_ahead=4)[0]]
    for _ in range(6):  # steps 3 to 8: the end of a block, a whole one, the start of the next
        a, b = (engine.step() for engine in engines)
        assert all(torch.equal(a[name], b[name]) for name in a), (a, b)
    assert engines[1]._block[0] == 8
    for name, value in one.state_dict().items():
        assert torch.equal(value, blocked.state_dict()[name]), name


def test_sbvae_train_draws_about_eight_batches_at_once_on_the_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert draw_ahead_for(cpu, "eager", 5) == 8
    assert draw_ahead_for(cpu, "eager", torch.tensor([0, 1, 2])) == 2  # three seeds: two steps of three batches
    assert draw_ahead_for(cpu, "eager", torch.arange(20)) == 1
    assert draw_ahead_for(cuda, "eager", 5) == 1 and draw_ahead_for(cuda, "graph", 5) == 1


def test_an_eager_step_does_not_probe_for_a_cuda_device(monkeypatch):
    """Adam's per-step question (is a CUDA graph being captured?) loads NVML under Lightning's settings."""
    engine, _ = make_engine(VAE(**SMALL), tiny_data())
    engine.step()

    def probe(*args, **kwargs):
        raise AssertionError("the step probed for an accelerator")

    monkeypatch.setattr(torch.accelerator, "current_accelerator", probe)
    monkeypatch.setattr(torch.cuda, "is_available", probe)
    engine.step()


def test_moments_restored_in_another_layout_are_read_in_their_own():
    """A run trained in the plain layout (as on a GPU) resumed with channels-last weights (as on the CPU): the
    CPU's fused Adam walks a weight and its moments as flat memory, so the engine lays the moments out anew."""
    torch.manual_seed(0)
    plain = VAE(**SMALL)
    dm = tiny_data()
    engine, optimizers = make_engine(plain, dm)
    engine.step()  # Adam's moments now exist, laid out like the plain weights
    runs = []
    for moments_like_weights in (False, True):
        model = VAE(**SMALL)
        model.load_state_dict(plain.state_dict())
        model.to(memory_format=torch.channels_last)
        optimizer = model.configure_optimizers()
        optimizer.load_state_dict(copy.deepcopy(optimizers[0].state_dict()))  # a copy, as from a file
        if moments_like_weights:  # what a run trained channels-last throughout would hold
            for p, state in optimizer.state.items():
                state.update({k: torch.empty_like(p).copy_(v) for k, v in state.items() if v.shape == p.shape})
        else:
            assert any(
                v.stride() != p.stride() for p, st in optimizer.state.items() for v in st.values() if v.ndim == 4
            )
        resumed = Engine(
            model,
            [optimizer],
            lambda step: dm.training_batch(5, 0, step, "cpu"),
            seed=5,
            rank=0,
            mode="eager",
            start_step=1,
            device=torch.device("cpu"),
        )
        for _ in range(2):
            resumed.step()
        runs.append(model.state_dict())
    for name, value in runs[1].items():
        assert torch.equal(runs[0][name], value), name


def test_block_draws_refuse_graph_mode():
    with pytest.raises(ValueError, match="draw_ahead must be 1 in graph mode"):
        make_engine(VAE(**SMALL), tiny_data(), mode="graph", draw_ahead=8)


def test_a_block_of_steps_draws_each_seeds_batch_of_each_step():
    dm = tiny_data(batch_size=3)
    seeds, steps = torch.tensor([3, 4]), torch.tensor([6, 7, 8])
    block = dm.training_batch(seeds, 0, steps, "cpu")
    noise = keyed.stream(keyed.POSTERIOR, seeds, 0, steps).normal((18, 7))  # 21 numbers a chunk: scalar tails
    assert block.shape == (2 * 3 * 3, 3, 16, 16)
    for r, seed in enumerate((3, 4)):
        for k, step in enumerate((6, 7, 8)):
            chunk = slice(3 * (3 * r + k), 3 * (3 * r + k + 1))  # seed-major
            assert torch.equal(block[chunk], dm.training_batch(seed, 0, torch.tensor(step), "cpu"))
            assert torch.equal(noise[chunk], keyed.stream(keyed.POSTERIOR, seed, 0, torch.tensor(step)).normal((3, 7)))


def test_factorvae_training_steps_both_networks_separately(tmp_path, config_path):
    torch.manual_seed(0)
    model = FactorVAE(**SMALL, disc_hidden=16, disc_layers=2)
    vae_opt, disc_opt = model.configure_optimizers()
    disc_ids = {id(p) for p in model.discriminator.parameters()}
    assert not disc_ids & {id(p) for g in vae_opt.param_groups for p in g["params"]}
    assert disc_ids == {id(p) for g in disc_opt.param_groups for p in g["params"]}
    before = snapshot(model)
    engine, _ = make_engine(model, tiny_data())
    engine.step()
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("discriminator.") for k in changed)
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)


def test_killed_run_resumes_bit_identical(tmp_path, config_path):
    """kill -9 after the step-3 checkpoint, resume from last.ckpt: the same weights as never stopping."""
    fit(config_path("quickstart.yaml"), tmp_path / "straight", "--trainer.max_steps", "8")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "sbvae.cli.train",
        "fit",
        "--config",
        config_path("quickstart.yaml"),
        *TINY,
        "--trainer.max_steps",
        "8",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "killed"),
        "--trainer.callbacks+=ddp_probe.KillAt",
        "--trainer.callbacks.step=5",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (killed,) = run_dirs(tmp_path / "killed")
    last = os.path.join(killed, "checkpoints", "last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    fit(config_path("quickstart.yaml"), tmp_path / "killed", "--trainer.max_steps", "8", "--ckpt_path", last)
    resumed = final_weights(run_dirs(tmp_path / "killed")[-1])
    straight = final_weights(run_dirs(tmp_path / "straight")[0])
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_divergence_in_a_trainer_stops_within_the_logging_interval(tmp_path, config_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(
            config_path("quickstart.yaml"),
            tmp_path,
            "--model.init_args.max_loss",
            "1.0",
            "--trainer.log_every_n_steps",
            "4",
            "--data.steps_per_epoch",
            "10",
            "--trainer.max_steps",
            "20",
        )
    assert exit_info.value.code == 3
    assert "diverged at step 0 (loss = " in capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    status = json.load(open(os.path.join(run, "status.json")))
    assert status["status"] == "diverged" and status["step"] == 0
    assert status["global_step"] == 4  # noticed at the first logging step, not every step
    assert not os.path.exists(os.path.join(run, "checkpoints", "last.ckpt"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_and_eager_paths_give_the_same_losses_for_20_steps():
    """Stated tolerance: 1e-4 relative on every logged term (kernel choice differs between capture and eager)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    losses = {}
    for mode in ("eager", "graph"):
        torch.manual_seed(0)
        model = VAE(image_size=64, channels=3).to(device)
        dm = GroundTruthDataModule("colored-sprites", image_size=64, batch_size=16, seed=5)
        optimizers = [model.configure_optimizers()]
        engine = Engine(
            model,
            optimizers,
            lambda s: dm.training_batch(5, 0, s, device),
            seed=5,
            rank=0,
            mode=mode,
            start_step=0,
            device=device,
        )
        losses[mode] = torch.stack([torch.stack(list(engine.step().values())).clone() for _ in range(20)])
    assert not torch.equal(losses["graph"][-1], losses["graph"][-2])  # replays see new data and noise
    torch.testing.assert_close(losses["graph"], losses["eager"], rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replays_render_new_images_and_noise_each_step():
    """Inside the replayed graph, step s sees exactly the images and noise keyed by step s, new each step."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = VAE(image_size=32, channels=3).to(device)
    dm = GroundTruthDataModule("colored-sprites", image_size=32, batch_size=16, seed=5)
    seen_x = torch.zeros(16, 3, 32, 32, device=device)
    seen_noise = torch.zeros(16, model.hparams.latent_dim, device=device)

    def draw(step):
        x = dm.training_batch(5, 0, step, device)
        seen_x.copy_(x)  # recorded into the graph: every replay refreshes it
        return x

    real = model.step_randomness
    model.step_randomness = lambda n, d: {"noise": seen_noise.copy_(real(n, d)["noise"])}
    engine = Engine(
        model, [model.configure_optimizers()], draw, seed=5, rank=0, mode="graph", start_step=0, device=device
    )
    seen = []
    for _ in range(8):  # 3 eager warm-up steps, the capture, then replays
        engine.step()
        seen.append((seen_x.clone(), seen_noise.clone()))
    assert engine._graph is not None
    for step in (5, 6, 7):  # replays
        x, noise = seen[step]
        assert not torch.equal(x, seen[step - 1][0]) and not torch.equal(noise, seen[step - 1][1])
        assert torch.equal(x, dm.training_batch(5, 0, torch.tensor(step, device=device), device))
        expected = keyed.stream(keyed.POSTERIOR, 5, 0, torch.tensor(step, device=device)).normal(noise.shape)
        assert torch.equal(noise, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_nan_step_freezes_weights():
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = VAE(image_size=32, channels=3).to(device)
    dm = GroundTruthDataModule("colored-sprites", image_size=32, batch_size=16, seed=5)
    poison = torch.ones((), device=device)
    real = model.loss_terms
    model.loss_terms = lambda x, noise: {**real(x, noise), "loss": real(x, noise)["loss"] * poison}
    engine = Engine(
        model,
        [model.configure_optimizers()],
        lambda s: dm.training_batch(5, 0, s, device),
        seed=5,
        rank=0,
        mode="graph",
        start_step=0,
        device=device,
    )
    for _ in range(6):  # 3 warm-up steps, then capture and replays
        engine.step()
    before = snapshot(model)
    optimizer = engine.optimizers[0]
    moments = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    poison.fill_(float("nan"))
    engine.step()
    poison.fill_(1.0)
    engine.step()
    assert engine.first_bad_step()[0] == 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for k, v in optimizer.state_dict()["state"][0].items():  # Adam's moments and step count: restored too
        assert torch.equal(v, moments[k]), k


def test_a_lightning_that_stops_counting_steps_stops_the_run(tmp_path, config_path, capsys, monkeypatch):
    """The engine's step is counted through the hooks of Lightning's optimizer wrapper; were they to stop
    counting, the run would train past max_steps: it stops with what to do instead."""
    from lightning.pytorch.loops.optimization.manual import _ManualOptimization

    monkeypatch.setattr(_ManualOptimization, "_on_after_step", lambda self: None)
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path)
    assert exit_info.value.code == 2
    assert "did not count the step through its optimizer's step hooks" in capsys.readouterr().err


def test_the_cpu_draws_are_the_accelerator_draws():
    """The CPU hashes with numpy's wrapping uint32 products, accelerators with 16-bit halves in int64: the same
    bits, and both equal MurmurHash3's finaliser computed on Python ints (an independent oracle)."""
    import numpy as np

    values = [0, 1, 2**16 - 1, 2**16, 2**31, 2**32 - 1, 0x9E3779B9, 123456789, 0xDEADBEEF]
    oracle = [keyed._fmix32_int(v) for v in values]
    assert keyed._fmix32(torch.tensor(values, dtype=torch.int64)).tolist() == oracle
    assert keyed._fmix32_host(np.array(values, dtype=np.uint32)).tolist() == oracle
    for keys in (keyed.key(keyed.POSTERIOR, 5, 0, 7), keyed.key(keyed.FACTORS, torch.tensor([3, 4, 2**40]), 1, 9)):
        host, device_like = keyed.KeyedRandom(keys), keyed.KeyedRandom(keys)
        device_like._host_keys = None  # the program an accelerator runs, here on CPU tensors
        for shape in ((len(keys.reshape(-1)) * 5,), (len(keys.reshape(-1)) * 3, 2)):
            assert torch.equal(host._bits(shape), device_like._bits(shape))
        assert torch.equal(host.normal((len(keys.reshape(-1)) * 4,)), device_like.normal((len(keys.reshape(-1)) * 4,)))


# -- graph mode on the CPU, simulated: what step_mode auto does when a capture or its first replay fails ----------


class StandInGraph:
    """A CUDA graph runner for the CPU: capturing keeps the step's program, replaying runs it; ``fail`` makes
    the capture raise ("capture"), or the replays give a NaN loss ("nan") or a wrong update ("wrong")."""

    def __init__(self, fail=None, model=None):
        self.fail, self.model, self.replays = fail, model, 0

    def warm_up(self, run):
        run()

    def capture(self, program):
        if self.fail == "capture":
            raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
        if self.fail == "invalidated":  # torch.cuda.graph's exit raises again while the first error propagates
            try:
                raise RuntimeError("operation not permitted when stream is capturing")
            except RuntimeError:
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from None

        def graph():  # a captured backward writes its static gradients afresh on each replay: no accumulation
            program()
            for p in self.model.parameters():
                p.grad = None

        return graph

    def replay(self, program):
        self.replays += 1
        if self.fail == "nan":
            real = self.model.loss_terms
            self.model.loss_terms = lambda x, noise: {**real(x, noise), "loss": real(x, noise)["loss"] * float("nan")}
            try:
                program()
            finally:
                self.model.loss_terms = real
            return
        before = next(self.model.parameters()).detach().clone()
        program()
        if self.fail == "wrong":  # e.g. a replay that read a stale input: one weight updated twice
            with torch.no_grad():
                next(self.model.parameters()).add_(1e-2)
        if self.fail == "noise":  # one element whose gradient is rounding noise: Adam moved it the other way
            with torch.no_grad():
                first = next(self.model.parameters()).view(-1)
                first[0] -= 2 * (first[0] - before.view(-1)[0])


def graphed_run(monkeypatch, fail=None, steps=7, fallback=True, replicas=False):
    """Weights and per-step losses of a simulated graph engine (capture at the 4th step), and the engine."""
    import sbvae.engine as engine_module

    torch.manual_seed(0)
    model = VAE(**SMALL)
    runner = StandInGraph(fail, model)
    monkeypatch.setattr(engine_module, "graph_runner", lambda: runner)
    dm = tiny_data()
    optimizers = [model.configure_optimizers()]
    engine = Engine(
        model,
        optimizers,
        lambda step: dm.training_batch(5, 0, step, torch.device("cpu")),
        seed=5,
        rank=0,
        mode="graph",
        start_step=0,
        device=torch.device("cpu"),
        fallback=fallback,
    )
    model.engine = engine
    losses = [float(engine.step()["loss"]) for _ in range(steps)]
    return snapshot(model), losses, engine, runner


def eager_run(steps=7):
    torch.manual_seed(0)
    model = VAE(**SMALL)
    engine, _ = make_engine(model, tiny_data())
    losses = [float(engine.step()["loss"]) for _ in range(steps)]
    return snapshot(model), losses


def test_a_working_graph_step_is_checked_once_and_kept(monkeypatch):
    weights, losses, engine, runner = graphed_run(monkeypatch)
    eager_weights, eager_losses = eager_run()
    assert engine.mode == "graph" and engine.fallback is None and runner.replays == 4  # steps 3..6
    assert losses == eager_losses and all(torch.equal(weights[k], eager_weights[k]) for k in weights)


@pytest.mark.parametrize(
    "fail, cause",
    [
        ("capture", "could not be captured (RuntimeError: operation not permitted when stream is capturing)"),
        ("nan", "gave a non-finite loss where the eager step's is finite"),
        ("wrong", "disagreed with the eager step (weight tensor 0: "),
        (
            "invalidated",
            "could not be captured (RuntimeError: operation not permitted when stream is capturing; then "
            "RuntimeError: CUDA error: operation failed due to a previous error during capture)",
        ),
    ],
)
def test_a_failed_capture_or_first_replay_goes_on_eagerly_from_the_same_step(monkeypatch, fail, cause):
    with pytest.warns(UserWarning, match="step_mode auto: the CUDA graph step") as warned:
        weights, losses, engine, runner = graphed_run(monkeypatch, fail)
    eager_weights, eager_losses = eager_run()
    assert engine.mode == "eager" and engine.fallback.startswith(f"the CUDA graph step {cause}")
    assert engine.fallback.endswith("at step 3") and len(warned) == 1
    assert runner.replays == (0 if fail in ("capture", "invalidated") else 1)  # the first replay only, then eager
    # The failed step is undone and run again eagerly: the run is the eager run, bit for bit.
    assert losses == eager_losses and all(torch.equal(weights[k], eager_weights[k]) for k in weights)


def test_a_replay_off_in_a_few_noisy_elements_is_kept(monkeypatch):
    """cuDNN's atomics may flip an element whose gradient is rounding noise: not a reason to give up the graph."""
    _, _, engine, runner = graphed_run(monkeypatch, "noise")
    assert engine.mode == "graph" and engine.fallback is None and runner.replays == 4


def test_step_mode_graph_asked_for_stops_on_a_failed_capture(monkeypatch):
    with pytest.raises(SBVAEError, match="the CUDA graph step could not be captured .* at step 3; use step_mode auto"):
        graphed_run(monkeypatch, "capture", fallback=False)


def test_a_trainer_whose_capture_fails_records_the_fallback_in_its_status(tmp_path, config_path, monkeypatch):
    """Through sbvae-train (auto on a "CUDA" device, simulated): one warning, the run completes eagerly and
    status.json says why; the run equals an eager one."""
    import sbvae.engine as engine_module
    import sbvae.trainer_step as trainer_step

    real = trainer_step.resolved_step_mode
    monkeypatch.setattr(
        trainer_step, "resolved_step_mode", lambda mode, *a: "graph" if mode == "auto" else real(mode, *a)
    )
    monkeypatch.setattr(trainer_step, "draw_ahead_for", lambda *a: 1)
    monkeypatch.setattr(engine_module, "graph_runner", lambda: StandInGraph("capture"))
    with pytest.warns(UserWarning, match="could not be captured"):
        fit(config_path("quickstart.yaml"), tmp_path / "auto")
    (run,) = run_dirs(tmp_path / "auto")
    status = json.load(open(os.path.join(run, "status.json")))
    assert status["status"] == "completed" and status["step_mode"] == "eager"
    assert status["graph_fallback"].startswith("the CUDA graph step could not be captured (RuntimeError")
    assert status["graph_fallback"].endswith("at step 3")
    monkeypatch.setattr(trainer_step, "resolved_step_mode", real)
    fit(config_path("quickstart.yaml"), tmp_path / "eager", "--model.init_args.step_mode", "eager")
    assert final_weights(run).keys() == final_weights(run_dirs(tmp_path / "eager")[0]).keys()
    for name, value in final_weights(run_dirs(tmp_path / "eager")[0]).items():
        assert torch.equal(final_weights(run)[name], value), name
