"""One fused ONNX graph and the fixed-NFE runtime: parity with the PyTorch reference, metadata,
refusals, threads."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_net

from amed_deploy.amed_network import AMEDNetwork, DeployModule, graph_spec
from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.graph import PRECISION_DTYPES
from amed_deploy.metadata import METADATA_KEY, GraphSpec
from amed_deploy.runtime import Sampler
from amed_deploy.sampling import baseline_sampler, reference_sample
from exporters.onnx_export import export_onnx


def _ref_error(images, ref):
    """Max abs error, relative to the data scale when it exceeds 1 (random nets leave [-1, 1])."""
    return ((images - ref).abs().max() / max(1.0, ref.abs().max().item())).item()


def test_graph_io_and_metadata_round_trip(amed_onnx, distilled, tiny_ckpt):
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint
    from amed_deploy.files import file_sha256

    network, sampler, _, pred = distilled
    model = onnx.load(amed_onnx)
    onnx.checker.check_model(model)
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    outs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert list(ins) == ["x", "sigma", "sigma_next", "class_labels"]
    assert list(outs) == ["denoised", "r", "c", "a"]
    assert all(t.elem_type == onnx.TensorProto.FLOAT for t in [*ins.values(), *outs.values()])
    assert ins["x"].shape.dim[0].dim_param  # dynamic batch
    spec = GraphSpec.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert spec.sampler == sampler and spec.kind == "amed" and spec.tap == network.tap
    assert (spec.batch_min, spec.batch_opt, spec.batch_max) == (1, 4, 8)
    assert spec.checkpoint_sha256 == model_sha256(load_checkpoint(tiny_ckpt))
    assert spec.predictor_sha256 == file_sha256(pred)
    assert spec.image_shape == (1, 16, 16) and spec.label_dim == 3
    r, c, a = network.predictor(None, torch.tensor([sampler.t_steps[0]]), torch.tensor([sampler.t_steps[1]]))
    assert spec.afs_rca == pytest.approx((r.item(), c.item(), a.item()))
    assert GraphSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_onnx_runtime_matches_pytorch_reference(amed_onnx, distilled, batch):
    network, sampler, *_ = distilled
    smp = Sampler.load(amed_onnx, batch=batch, device="cpu")
    out = smp.sample(seed=7)
    ref, labels = reference_sample(network, sampler, seed=7, batch=batch)
    assert torch.equal(out.labels, labels)
    assert _ref_error(out.images, ref) <= 1e-4
    # the sampler is reusable: a second call with the same seed gives the same images
    torch.testing.assert_close(smp.sample(seed=7).images, out.images, rtol=0, atol=0)
    assert not torch.equal(smp.sample(seed=8).images, out.images)


def test_torch_executor_matches_reference(tiny_ckpt, distilled):
    network, sampler, _, pred = distilled
    smp = Sampler.load(tiny_ckpt, predictor=pred, batch=3, device="cpu")
    assert smp.config == sampler
    out = smp.sample(seed=1, classes=[2, 0, 1])
    ref, _ = reference_sample(network, sampler, seed=1, batch=3, classes=[2, 0, 1])
    assert _ref_error(out.images, ref) <= 1e-5


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_torch_executor_in_half_precision(tmp_path, tiny_ckpt, distilled, precision, dtype):
    """The U-Net really runs in the half type (its buffers and weights), and stays close to fp32."""
    network, sampler, _, pred = distilled
    smp = Sampler.load(tiny_ckpt, predictor=pred, batch=2, device="cpu", precision=precision)
    assert smp.executor.inputs["x"].dtype == dtype
    assert {p.dtype for p in smp.executor.module.network.net.model.parameters()} == {dtype}
    assert {p.dtype for p in smp.executor.module.network.predictor.parameters()} == {torch.float32}
    ref, _ = reference_sample(network, sampler, seed=0, batch=2)
    err = _ref_error(smp.sample(seed=0).images.float(), ref)
    assert 0 < err < 5e-2, err
    if precision == "bf16":  # a PyTorch-executor precision: no exported graph carries it
        with pytest.raises(AmedError, match="precision must be fp32 or fp16"):
            export_onnx(network, tmp_path / "g.onnx", sampler=sampler, precision="bf16")
        assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_deploy_module_leaves_the_callers_network_unchanged(precision):
    """DeployModule casts a private copy: the caller's network keeps its fp32 weights and gradients."""
    network = AMEDNetwork(tiny_net())
    before = {k: v.clone() for k, v in network.state_dict().items()}
    module = DeployModule(network, precision).requires_grad_(False)
    assert {p.dtype for p in module.network.net.model.parameters()} == {PRECISION_DTYPES[precision]}
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    assert all(p.requires_grad for p in network.parameters())
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())


def test_fp16_graph(tmp_path, distilled):
    network, sampler, *_ = distilled
    out = tmp_path / "amed5_fp16.onnx"
    res = export_onnx(network, out, sampler=sampler, precision="fp16", batch=2)
    model = onnx.load(out)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types["x"] == types["denoised"] == onnx.TensorProto.FLOAT16
    assert types["sigma"] == types["r"] == onnx.TensorProto.FLOAT
    fp16_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) > 20  # the U-Net really is fp16
    assert res.errors["denoised"] < 5e-2
    smp = Sampler.load(out, device="cpu")
    ref, _ = reference_sample(network, sampler, seed=0, batch=2)
    err = _ref_error(smp.sample(seed=0).images, ref)
    assert err < 5e-2, err


@pytest.fixture(scope="module")
def denoiser_onnx(tmp_path_factory):
    """The tiny network alone (no predictor, no sampler), batch 2: what training-free solvers run on."""
    out = tmp_path_factory.mktemp("denoiser") / "denoiser.onnx"
    export_onnx(AMEDNetwork(tiny_net()), out, sampler=None, batch=2)
    return out


def test_denoiser_graph_with_baseline_solvers(denoiser_onnx):
    net, out = tiny_net(), denoiser_onnx
    with pytest.raises(AmedError, match="choose a solver"):
        Sampler.load(out, device="cpu")
    for solver, nfe in [("ipndm", 5), ("dpmpp3m", 5), ("heun", 6), ("euler", 4)]:
        smp = Sampler.load(out, device="cpu", solver=solver, nfe=nfe)
        ref, _ = reference_sample(AMEDNetwork(net), baseline_sampler(net, solver, nfe), seed=2, batch=2)
        assert _ref_error(smp.sample(seed=2).images, ref) <= 1e-4
    with pytest.raises(AmedError, match="needs a predictor"):
        Sampler.load(out, device="cpu", solver="amed", nfe=5, afs=True)


def test_denoiser_graph_takes_the_solvers_options(denoiser_onnx):
    """solver_options reach the training-free solver, as its reference names them; the same options on the
    checkpoint give the same samples (one SamplerConfig.create path)."""
    net, out = tiny_net(), denoiser_onnx
    noise = {"predict_x0": False}
    smp = Sampler.load(out, device="cpu", solver="dpmpp3m", nfe=5, solver_options=noise)
    assert smp.config.predict_x0 is False and smp.config.thresholding is False  # thresholding: data prediction only
    ref, _ = reference_sample(AMEDNetwork(net), baseline_sampler(net, "dpmpp3m", 5, options=noise), seed=2, batch=2)
    assert _ref_error(smp.sample(seed=2).images, ref) <= 1e-4
    default, _ = reference_sample(AMEDNetwork(net), baseline_sampler(net, "dpmpp3m", 5), seed=2, batch=2)
    assert (default - ref).abs().max() > 1e-4  # the option changed the formula
    assert Sampler.load(out, device="cpu", solver="lms", nfe=4, solver_options={"max_order": 2}).config.max_order == 2
    assert (
        Sampler.load(out, device="cpu", solver="lms", nfe=4, solver_options={"max_order": None}).config.max_order == 4
    )
    with pytest.raises(AmedError, match=r"^heun takes no max_order option \(it applies to ipndm, lms"):
        Sampler.load(out, device="cpu", solver="heun", nfe=6, solver_options={"max_order": 2})
    with pytest.raises(AmedError, match="dpmpp2m's max_order must be an integer 1..2, got 3"):
        Sampler.load(out, device="cpu", solver="dpmpp2m", nfe=4, solver_options={"max_order": 3})
    with pytest.raises(AmedError, match="unknown solver option 'order'"):
        Sampler.load(out, device="cpu", solver="lms", nfe=4, solver_options={"order": 2})
    with pytest.raises(AmedError, match=r"solver_options \(--max-order.*\) apply to solver \(--solver\).*pass solver"):
        Sampler.load(out, device="cpu", solver_options={"max_order": 2})


def test_an_amed_graph_refuses_another_formula_or_other_options(amed_onnx):
    """Its predictor was distilled for one formula: another AMED solver's, or other settings of its own,
    are refused (amed_dpm2, the AMED-Plugin on DPM-Solver-2, is no longer a name of the AMED-Solver)."""
    with pytest.raises(AmedError, match=r"distilled for amed \(AMED-Solver\), not amed_dpm2.*--student amed_dpm2\)$"):
        Sampler.load(amed_onnx, solver="amed_dpm2", device="cpu")
    with pytest.raises(AmedError, match="^amed takes no max_order option"):
        Sampler.load(amed_onnx, solver="amed", solver_options={"max_order": 2}, device="cpu")
    assert Sampler.load(amed_onnx, solver="amed", solver_options={}, batch=1, device="cpu").config.solver == "amed"
    smp = Sampler.load(amed_onnx, solver="ipndm", nfe=4, solver_options={"max_order": 3}, batch=1, device="cpu")
    assert smp.config.solver == "ipndm" and smp.config.max_order == 3  # a training-free solver on its denoiser


def test_refusals(amed_onnx, tmp_path):
    with pytest.raises(AmedError, match="outside this graph's range"):
        Sampler.load(amed_onnx, batch=9, device="cpu")
    with pytest.raises(AmedError, match="exported for NFE 5"):
        Sampler.load(amed_onnx, nfe=7, device="cpu")
    with pytest.raises(AmedError, match=r"distilled for amed \(AMED-Solver\), not amed_ipndm: the formulas differ"):
        Sampler.load(amed_onnx, solver="amed_ipndm", nfe=6, device="cpu")
    data = amed_onnx.read_bytes()
    for name, content in [("trunc.onnx", data[: len(data) // 3]), ("empty.onnx", b""), ("junk.onnx", b"\x00" * 99)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AmedError):
            Sampler.load(tmp_path / name, device="cpu")
    # an ONNX from another tool: no amed-deploy metadata -> a hint
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(1, 1, 3), (torch.randn(1, 1, 8, 8),), plain, dynamo=True)
    with pytest.raises(AmedError, match="no amed-deploy metadata"):
        Sampler.load(plain, device="cpu")
    smp = Sampler.load(amed_onnx, batch=2, device="cpu")
    with pytest.raises(AmedError, match="NaN"):
        smp.sample(noise=torch.full((2, 1, 16, 16), float("nan")))
    with pytest.raises(AmedError, match="shape"):
        smp.sample(noise=torch.zeros(3, 1, 16, 16))
    with pytest.raises(AmedError, match="out of range"):
        smp.sample(classes=5)
    with pytest.raises(AmedError, match="unknown file type"):
        Sampler.load(tmp_path / "model.bin")


def test_plan_without_tensorrt_is_refused_clearly(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    plan = tmp_path / "amed5.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(AmedError):
        Sampler.load(plan, batch=1, device="cpu")


def test_one_sampler_shared_by_threads_is_deterministic(amed_onnx):
    smp = Sampler.load(amed_onnx, batch=2, device="cpu")
    expected = {seed: smp.sample(seed=seed).images for seed in range(8)}
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(3):
                results[seed] = smp.sample(seed=seed).images
        except BaseException as e:  # surface thread failures in the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for seed, images in expected.items():
        assert torch.equal(results[seed], images)


def test_cli_export_and_run(tmp_path, tiny_ckpt, distilled):
    *_, pred = distilled
    runner = CliRunner()
    onnx_path = tmp_path / "engines" / "amed5.onnx"
    args = ["export", "--ckpt", str(tiny_ckpt), "--predictor", str(pred), "--out", str(onnx_path)]
    res = runner.invoke(main, [*args, "--batch", "2", "--fixed-batch"])
    assert res.exit_code == 0, res.output
    assert "max abs error" in res.output and onnx_path.exists()
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    res = runner.invoke(main, ["run", "--engine", str(onnx_path), "--seed", "3", "--out", str(png), "--npz", str(npz)])
    assert res.exit_code == 0, res.output
    assert png.exists() and np.load(npz)["raw"].shape == (2, 1, 16, 16)
    res = runner.invoke(main, ["run", "--engine", str(onnx_path), "--batch", "3", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "outside this graph's range" in res.output
    assert not (tmp_path / "x.png").exists()
    res = runner.invoke(main, ["build", "--onnx", str(onnx_path), "--out", str(tmp_path / "a.plan")])
    if res.exit_code == 2:  # no TensorRT here: one line, nothing written
        assert "TensorRT" in res.output and not (tmp_path / "a.plan").exists()


def test_every_executor_declares_whether_the_sampler_may_capture_it():
    """The Sampler reads `capturable` before its first call; a backend without it would fail at load."""
    from amed_deploy.runtime.onnx_executor import OnnxExecutor
    from amed_deploy.runtime.torch_executor import TorchExecutor
    from amed_deploy.runtime.trt_executor import TRTExecutor

    assert {cls.__name__: cls.capturable for cls in (OnnxExecutor, TorchExecutor, TRTExecutor)} == {
        "OnnxExecutor": False,
        "TorchExecutor": True,
        "TRTExecutor": True,
    }


def test_every_executor_opens_runs_and_closes(amed_onnx, distilled):
    """One shape for every backend: open(source, batch, device, **backend options), run(), close()."""
    from amed_deploy.runtime.executor import Executor
    from amed_deploy.runtime.onnx_executor import OnnxExecutor
    from amed_deploy.runtime.torch_executor import TorchExecutor
    from amed_deploy.runtime.trt_executor import TRTExecutor

    assert all(issubclass(cls, Executor) for cls in (OnnxExecutor, TorchExecutor, TRTExecutor))
    network, sampler, *_ = distilled
    spec = graph_spec(network, sampler, "fp32", 2)
    for executor in (OnnxExecutor.open(amed_onnx, 2, "cpu"), TorchExecutor.open(network, 2, "cpu", spec=spec)):
        with executor:
            executor.inputs["sigma"].fill_(1.0)
            executor.inputs["sigma_next"].fill_(0.5)
            executor.run()
            assert torch.isfinite(executor.outputs["denoised"]).all()
            assert executor.outputs["denoised"].shape == (2, 1, 16, 16)
        assert executor.inputs == executor.outputs == {}  # buffers released
        with pytest.raises(AmedError, match="closed"):
            executor.run()
