"""Max abs error of the ONNX Runtime graphs (ort-cuda fp32/fp16, portable fp16) against the fp32 PyTorch
reference on the bundled model, NFE 5, seed 0: which step of the ORT-CUDA rewrite costs accuracy."""

import tempfile

from amed_deploy import assets
from amed_deploy.runtime import Sampler
from amed_deploy.sampling import load_model, reference_sample
from exporters.onnx_export import export_onnx

loaded = load_model(assets.MODEL, assets.PREDICTORS[5])
cls = list(range(10)) + [0] * 6
folder = tempfile.mkdtemp(prefix="amed-parity-")
want, _ = reference_sample(loaded.network, loaded.bundle.sampler, 0, 16, cls)
for prec, target in (("fp32", "ort-cuda"), ("fp16", "ort-cuda"), ("fp16", "portable")):
    g = f"{folder}/{prec}-{target}.onnx"
    export_onnx(loaded.network, g, sampler=loaded.bundle.sampler, precision=prec, batch=16, target=target, check=False)
    got = Sampler.load(g, device="cuda").sample(seed=0, classes=cls).images.cpu()
    print(prec, target, "max abs vs fp32 reference", (got - want).abs().max().item(), flush=True)
