"""GPU parity (needs a CUDA GPU: `pytest -m gpu`): the PyTorch CUDA
executor and ONNX Runtime's CUDA provider, fp32 and fp16, against the fp32 CPU reference."""

from __future__ import annotations

import pytest
import torch
from conftest import need_ort_cuda, tiny_net

from amed_deploy.errors import AmedError
from amed_deploy.runtime import Sampler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
BOUND = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 1e-1}  # relative to the data scale; fp32 allows cuDNN's algorithm choice


def _rel(a, b):
    return ((a.cpu() - b.cpu()).abs().max() / max(1.0, b.abs().max().item())).item()


@pytest.fixture(scope="module")
def reference(tiny_ckpt, distilled):
    *_, pred = distilled
    return Sampler.load(tiny_ckpt, predictor=pred, batch=4, device="cpu").sample(seed=5).images


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_executor(tiny_ckpt, distilled, reference, precision):
    *_, pred = distilled
    smp = Sampler.load(tiny_ckpt, predictor=pred, batch=4, device="cuda", precision=precision)
    images = smp.sample(seed=5).images
    err = _rel(images, reference)
    print(f"PyTorch CUDA {precision}: rel. max abs error {err:.2e}")
    assert err <= BOUND[precision]
    graphed = Sampler.load(tiny_ckpt, predictor=pred, batch=4, device="cuda", precision=precision, cuda_graph=True)
    first = graphed.sample(seed=5).images
    before = torch.cuda.memory_allocated()
    for seed in (6, 5):
        again = graphed.sample(seed=seed).images
    assert torch.cuda.memory_allocated() <= before + 4 * again.numel() * 4  # no per-call reallocation
    assert _rel(first, images) <= 1e-4 and torch.equal(again, first)


def test_torch_compile_executor(tiny_ckpt, distilled, reference):
    """torch.compile (Inductor) inside the whole-loop CUDA graph keeps fp16 parity."""
    *_, pred = distilled
    smp = Sampler.load(
        tiny_ckpt, predictor=pred, batch=4, device="cuda", precision="fp16", cuda_graph=True, compile=True
    )
    err = _rel(smp.sample(seed=5).images, reference)
    print(f"PyTorch CUDA fp16 compiled: rel. max abs error {err:.2e}")
    assert err <= BOUND["fp16"] and smp.graphed


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_provider(tmp_path, distilled, reference, precision):
    need_ort_cuda()
    from exporters.onnx_export import export_onnx

    network, sampler, *_ = distilled
    path = tmp_path / f"g_{precision}.onnx"
    export_onnx(network, path, sampler=sampler, precision=precision, batch=4)
    images = Sampler.load(path, device="cuda").sample(seed=5).images
    err = _rel(images, reference)
    print(f"ORT CUDA {precision}: rel. max abs error {err:.2e}")
    assert err <= BOUND[precision]
    try:
        graphed = Sampler.load(path, device="cuda", cuda_graph=True)
    except AmedError as e:  # ORT could not capture: it must say so at load time, clearly
        assert "could not record this graph as a CUDA graph" in str(e)
        return
    for _ in range(2):
        assert _rel(graphed.sample(seed=5).images, images) <= 1e-4


@pytest.mark.parametrize("backend", ["torch", "ort", "ort-graph"])
def test_executor_waits_for_pending_writes_to_its_inputs(tmp_path, tiny_ckpt, distilled, backend):
    """run() evaluates the inputs as torch's current stream wrote them, even when those writes still wait
    behind a long kernel. ONNX Runtime runs on a stream of its own (the default stream's handle 0 cannot be
    handed to it), so without waiting it read the previous inputs: wrong samples on a busy GPU."""
    *_, pred = distilled
    if backend == "torch":
        smp = Sampler.load(tiny_ckpt, predictor=pred, batch=4, device="cuda")
    else:
        need_ort_cuda()
        from exporters.onnx_export import export_onnx

        network, sampler, *_ = distilled
        path = tmp_path / "g.onnx"
        export_onnx(network, path, sampler=sampler, batch=4)
        try:
            smp = Sampler.load(path, device="cuda", cuda_graph=backend == "ort-graph")
        except AmedError as e:
            assert "could not record this graph as a CUDA graph" in str(e)
            pytest.skip(f"ONNX Runtime recorded no CUDA graph of this graph: {e}")
    smp.sample(seed=5)  # leaves the last call's (valid) inputs in the buffers
    ex = smp.executor
    inputs, outputs = ex.buffers[ex.batch]
    saved = {name: t.clone() for name, t in inputs.items()}
    ex.run()
    want = {name: t.clone() for name, t in outputs.items()}
    for t in inputs.values():
        t.zero_()
    torch.cuda.synchronize()
    torch.cuda._sleep(500_000_000)  # some 0.2 s of GPU time on torch's stream, ahead of the writes below
    for name, t in inputs.items():
        t.copy_(saved[name])  # device to device: enqueued, not yet done when run() is called
    ex.run()
    got = {name: t.clone() for name, t in outputs.items()}
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_tiny_net_is_not_degenerate():
    """The parity above means something only if the network output depends on its input."""
    net = tiny_net().cuda()
    x = torch.randn(2, 1, 16, 16, device="cuda")
    d = net(x, torch.full((2,), 2.0, device="cuda"))
    assert (d - net(x * 0.5, torch.full((2,), 2.0, device="cuda"))).abs().max() > 1e-2


@pytest.mark.parametrize("backend", ["torch-graph", "ort"])
def test_samplers_load_and_sample_in_threads(tmp_path, tiny_ckpt, distilled, backend):
    """8 Samplers loaded and sampled in 8 threads at once give what one Sampler gives serially:
    first runs and graph captures use CUDA stream capture, which concurrent setup calls used to break
    (ONNX Runtime and the PyTorch graph path both failed so in gpu_reliability.py)."""
    import threading

    network, sampler, *_, pred = distilled
    if backend == "ort":
        need_ort_cuda()
        from exporters.onnx_export import export_onnx

        path = tmp_path / "g.onnx"
        export_onnx(network, path, sampler=sampler, precision="fp16", batch=4)

        def load() -> Sampler:
            return Sampler.load(path, device="cuda")
    else:

        def load() -> Sampler:
            return Sampler.load(tiny_ckpt, predictor=pred, batch=4, device="cuda", precision="fp16", cuda_graph=True)

    serial = load()
    want = [serial.sample(seed=i).images.cpu() for i in range(8)]
    got, failures = {}, []

    def work(i: int) -> None:
        try:
            smp = load()
            for _ in range(3):
                got[i] = smp.sample(seed=i).images.cpu()
        except Exception as e:
            failures.append(f"{type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert all(torch.equal(got[i], want[i]) for i in range(8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_runs_in_a_fused_kernel(dtype):
    """Half-precision attention must reach SDPA's flash or memory-efficient kernel: with the math
    fallback disallowed it still runs (3-D or d-strided inputs silently fell back to the math path,
    which computes in fp32), and it matches the explicit fp32-softmax formula. CIFAR-10's shape:
    one head of 256 channels over 16x16 pixels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from amed_deploy.networks.layers import attention

    qkv = torch.randn(4, 3 * 256, 16, 16, device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        got = attention(qkv.to(dtype), 1).float()
    want = attention(qkv, 1)  # fp32 on CUDA: the explicit formula
    assert _rel(got, want) < {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]


@pytest.mark.parametrize("solver", ["dpmpp3m", "lms"])
def test_history_solvers_record_in_one_cuda_graph(tiny_ckpt, solver):
    """DPM-Solver++'s dynamic thresholding (a sort per sample at fixed positions) and LMS's grid-integrated
    coefficients need no host synchronisation, so the whole-loop CUDA graph records them; replays equal
    the eager loop."""
    eager = Sampler.load(tiny_ckpt, batch=4, device="cuda", solver=solver, nfe=5)
    graphed = Sampler.load(tiny_ckpt, batch=4, device="cuda", solver=solver, nfe=5, cuda_graph=True)
    assert solver != "dpmpp3m" or graphed.config.thresholding
    want = eager.sample(seed=2).images
    for _ in range(2):
        torch.testing.assert_close(graphed.sample(seed=2).images, want, rtol=1e-4, atol=1e-4)


def test_epd_parallel_call_in_the_whole_loop_cuda_graph(tiny_ckpt, epd_predictor):
    """EPD's two call batch sizes (B and K*B) on the PyTorch CUDA executor, eager and recorded as one
    CUDA graph, against the CPU reference."""
    cpu = Sampler.load(tiny_ckpt, predictor=epd_predictor, batch=4, device="cpu").sample(seed=3, classes=[0, 1, 2, 0])
    for cuda_graph in (False, True):
        smp = Sampler.load(tiny_ckpt, predictor=epd_predictor, batch=4, device="cuda", cuda_graph=cuda_graph)
        assert sorted(smp.executor.buffers) == [4, 8]
        images = smp.sample(seed=3, classes=[0, 1, 2, 0]).images
        again = smp.sample(seed=3, classes=[0, 1, 2, 0]).images
        print(f"EPD cuda_graph={cuda_graph}: rel. max abs error {_rel(images, cpu.images):.2e}")
        assert _rel(images, cpu.images) <= BOUND["fp32"] and torch.equal(images, again)


class ConvBatchNorm(torch.nn.Module):
    """A feature network built like Inception-v3's stem (conv, eval-mode batch norm, ReLU, pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(8, eps=1e-3)
        torch.nn.init.uniform_(self.bn.running_mean, -1, 1)
        torch.nn.init.uniform_(self.bn.running_var, 0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def test_feature_loss_gradients_through_a_torchscript_network_cuda():
    """EPD's Inception-feature loss backpropagates through the TorchScript FID network on every call, not only
    the first (the executor's optimised graphs take over from the second), with the eager gradients."""
    from amed_deploy.fid import Inception, _network_input, differentiable_features

    torch.manual_seed(0)
    eager = ConvBatchNorm().cuda().eval()
    net = Inception(torch.jit.script(eager), feature_dim=8)
    for call in range(4):
        x = torch.rand(2, 3, 32, 32, device="cuda", requires_grad=True)
        differentiable_features(x, net).square().sum().backward()
        truth = x.detach().clone().requires_grad_()
        pixels = (truth * 127.5 + 128).clamp(0, 255)
        eager(_network_input(pixels, "tf", "tf")).square().sum().backward()
        torch.testing.assert_close(x.grad, truth.grad, rtol=1e-4, atol=1e-6, msg=f"call {call}")


def test_feature_loss_gradients_through_the_fid_network_cuda():
    """The same through the real FID Inception-v3 (its optimised TorchScript graph raised in batch-norm
    backward from the second call on torch 2.11, where the small stand-in above does not): every call
    gives the first call's gradient for the same images."""
    import os

    from amed_deploy.fid import differentiable_features, load_inception

    path = os.environ.get("AMED_INCEPTION")
    if not path:
        pytest.skip("set AMED_INCEPTION to the FID Inception-v3 TorchScript file (inception-2015-12-05.pt)")
    net = load_inception(path, "cuda")
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32, device="cuda") * 2 - 1
    grads = []
    for _ in range(3):
        x = images.clone().requires_grad_()
        differentiable_features(x, net).square().sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    for later in grads[1:]:
        torch.testing.assert_close(later, grads[0], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_epd_graph_on_onnxruntime_cuda(tmp_path, cuda_graph):
    """An exported EPD graph on ONNX Runtime's CUDA provider: one I/O binding per call batch (B and K*B;
    under a CUDA graph each replays its own gpu_graph_id) samples what the eager reference samples."""
    need_ort_cuda()
    from amed_deploy.amed_network import AMEDNetwork
    from amed_deploy.config import SamplerConfig
    from amed_deploy.epd_table import EPDTable
    from amed_deploy.sampling import reference_sample
    from exporters.onnx_export import export_onnx

    torch.manual_seed(3)
    network = AMEDNetwork(tiny_net(), EPDTable(3))
    sampler = SamplerConfig.create("epd", 5, "time_uniform", (0.002, 80.0), True)
    path = tmp_path / "epd5.onnx"
    # a CUDA graph needs a fixed-shape graph per binding: ORT records one only where no node runs on the host
    export_onnx(network, path, sampler=sampler, batch=2)
    want, _ = reference_sample(network, sampler, seed=7, batch=2, classes=[2, 0])
    try:
        smp = Sampler.load(path, device="cuda", cuda_graph=cuda_graph)
    except AmedError as e:  # ORT could not capture: it must say so at load time, clearly
        assert cuda_graph and "could not record this graph as a CUDA graph" in str(e)
        pytest.skip(f"ONNX Runtime recorded no CUDA graph of this dynamic-batch graph: {e}")
    assert sorted(smp.executor.buffers) == [2, 4]
    for _ in range(2):
        images = smp.sample(seed=7, classes=[2, 0]).images
        print(f"ORT CUDA EPD cuda_graph={cuda_graph}: rel. max abs error {_rel(images, want):.2e}")
        assert _rel(images, want) <= BOUND["fp32"]
