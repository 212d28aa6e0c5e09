"""Accuracy evals for the quantization gate: offline MMLU, HumanEval and sanity prompts.

Runs against any OpenAI-compatible server (llama.cpp, vLLM, SGLang) and compares two weight
variants (base vs quantized) paired on the same items. ``data`` loads items, ``client`` asks the
server, ``score`` grades replies (HumanEval in a sandboxed subprocess), ``stats`` holds the pure
maths (Wilson interval, Tango paired interval, McNemar) and ``suite`` wires them together.
"""

from __future__ import annotations
