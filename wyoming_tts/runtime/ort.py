"""onnxruntime session options, chosen once for every graph of every voice."""

from __future__ import annotations

import onnxruntime

#: This project builds and tests for the CPU only.
PROVIDERS = ["CPUExecutionProvider"]


def session_options(intra_op_threads: int) -> onnxruntime.SessionOptions:
    """Options for many small runs on a small CPU: a thread pool per session, not spinning.

    Spinning pools of several sessions steal each other's cores (see docs/decisions.md).
    The CPU arena is on; whether a run keeps it is the model's choice.
    """
    opts = onnxruntime.SessionOptions()
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts
