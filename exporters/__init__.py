"""Exporters: checkpoint + predictor -> one ONNX graph (fp32/fp16) -> TensorRT engine + manifest."""
