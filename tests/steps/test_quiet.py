"""Third-party INFO logs stay off unless --debug: onnxruntime's quantizers log every node at INFO."""

from __future__ import annotations

import subprocess
import sys


def test_onnxruntime_quantizer_logs_are_quiet_unless_debugging():
    script = (
        "import logging\n"
        "from slmops_pipelines.quiet import quiet_libraries\n"
        "quiet_libraries()\n"
        "import onnxruntime.quantization.matmul_nbits_quantizer as q\n"  # calls logging.basicConfig(INFO)
        "q.logger.info('a node quantized')\n"
        "logging.getLogger('neural_compressor').info('gptq step')\n"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(debug=False)
    )
    loud = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(debug=True)
    )
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert "a node quantized" not in quiet.stderr and "gptq step" not in quiet.stderr
    assert "a node quantized" in loud.stderr  # the check can see the log when it is there


def _env(*, debug: bool) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "SLMOPS_DEBUG"}
    if debug:
        env["SLMOPS_DEBUG"] = "1"
    return env
