"""The OptimizeJob steps: export to ONNX per target, quantize, evaluate, gate.

* :mod:`.providers` -- what each ONNX Runtime execution provider can build and run here;
* :mod:`.export`    -- onnxruntime-genai's model builder (fp32/fp16/int4) and onnxruntime's
                       quantizer (int8), one folder per target, written atomically;
* :mod:`.runtime`   -- generation, latency and perplexity with onnxruntime-genai;
* :mod:`.reference` -- the same measurements for the PyTorch model the targets are compared to;
* :mod:`.gates`     -- quality gates.
"""
