#!/usr/bin/env python
"""Which operators of an int8 (QDQ) ``.onnx`` onnxruntime really runs in int8, and which stay fp32.

onnxruntime's CPU provider rewrites a QDQ graph when it loads it: a ``DequantizeLinear -> Conv ->
QuantizeLinear`` group becomes one ``QLinearConv`` (int8 in, int8 out), and so on for the other
operators it has int8 kernels for; whatever is left keeps running in fp32 between a
``DequantizeLinear`` and a ``QuantizeLinear``. This script loads the file as ``visionlab`` does
(all graph optimisations on), saves the graph onnxruntime runs
(``SessionOptions.optimized_model_filepath``) and counts it by operator: int8 kernels, fp32
convolutions (with their kernel size and group count), the Q/DQ nodes left and how many of the
DequantizeLinear nodes dequantise a weight (a constant) at every call. It also prints the CPU
flags that decide whether int8 can be fast at all (VNNI, AMX).

Usage::

    python benchmarks/int8_ops.py model.int8.onnx
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from typing import Sequence

INT8_OPS = ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid",
            "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool", "MatMulInteger", "ConvInteger", "QGemm")
FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16", "avx512f")


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    have = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return [f for f in FLAGS if f in have]


def optimized_graph(path: Path, folder: Path) -> "object":
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath).graph


def report(path: Path) -> str:
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        graph = optimized_graph(path, Path(tmp))
    consts = {i.name for i in graph.initializer}
    ops = collections.Counter(n.op_type for n in graph.node)
    convs = collections.Counter()
    for n in graph.node:
        if n.op_type in ("Conv", "FusedConv"):
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            kernel = "x".join(map(str, a.get("kernel_shape", []))) or "?"
            convs[f"{kernel}, group {a.get('group', 1)}"] += 1
    weight_dq = sum(1 for n in graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in consts)
    lines = [f"{path}: the graph onnxruntime {__import__('onnxruntime').__version__} runs ({len(graph.node)} nodes)",
             "int8 kernels: " + (", ".join(f"{op} {ops[op]}" for op in INT8_OPS if ops[op]) or "none"),
             f"fp32 convolutions: {sum(convs.values())}" + (f" ({', '.join(f'{v} of {k}' for k, v in convs.items())})" if convs else ""),
             f"QuantizeLinear {ops['QuantizeLinear']}, DequantizeLinear {ops['DequantizeLinear']} ({weight_dq} of them "
             "dequantise a constant weight at every call)",
             "all operators: " + ", ".join(f"{op} {c}" for op, c in ops.most_common()),
             "CPU flags: " + (", ".join(cpu_flags()) or "none of " + ", ".join(FLAGS))]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("model", type=Path, help="an int8 .onnx written by visionlab export --int8")
    args = p.parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"{args.model} is not a file: pass the .onnx that visionlab export --int8 wrote")
    print(report(args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
