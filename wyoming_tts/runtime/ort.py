"""onnxruntime session options, chosen once for every graph of every voice."""

from __future__ import annotations

import numpy as np
import onnxruntime

#: This project builds and tests for the CPU only.
PROVIDERS = ["CPUExecutionProvider"]

#: The run option that hands the CPU arena's free regions back at the end of a run.
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
#: onnxruntime's arena growth strategies (`OrtArenaCfg`): each extension doubles the last.
#: Extensions of just the size asked for held more (one voice +123 MB against +104 MB),
#: as freed regions of one size fit few later requests.
_NEXT_POWER_OF_TWO = 0
#: A one-node model (Identity of a float[1] "x" to "y", opset 13), serialized: what
#: `shrink_shared_arena` runs. Written out so the server need not import onnx (~11 MB
#: resident) to make it; tests/test_vits_split.py checks it against onnx.helper's.
SHRINK_MODEL = bytes.fromhex(
    "08073a3c0a100a017812017922084964656e746974791206736872696e6b5a0f0a0178120a0a0808"
    "0112040a020801620f0a0179120a0a08080112040a02080142040a00100d"
)


def share_cpu_arena() -> None:
    """Register one CPU arena for the process, for sessions opened with ``shared_arena``.

    Process-wide by nature: call once at start-up. Calling again registers a new arena
    (sessions opened before keep the old one); without a call, such sessions keep an
    arena each, as all sessions otherwise do.
    """
    memory = onnxruntime.OrtMemoryInfo(
        "Cpu",
        onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR,
        0,
        onnxruntime.OrtMemType.DEFAULT,
    )
    # No limit, default first chunk and dead-bytes bound: only the growth is chosen.
    config = onnxruntime.OrtArenaCfg(0, _NEXT_POWER_OF_TWO, -1, -1)
    onnxruntime.create_and_register_allocator(memory, config)


def session_options(
    intra_op_threads: int, *, shared_arena: bool = False
) -> onnxruntime.SessionOptions:
    """Options for many small runs on a small CPU: threads that never spin (by default one
    per session, so a worker is a core and no pool wakes between nodes).

    Spinning pools of several sessions steal each other's cores (see docs/decisions.md).
    The CPU arena is on; whether a run keeps it is the model's choice. ``shared_arena``:
    the session allocates from the process's arena (`share_cpu_arena`), so what it keeps
    between runs is shared with every other such session (of every voice) instead of
    held apart; runs of these sessions must not shrink it.
    """
    opts = _options(intra_op_threads, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if shared_arena:
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def first_use_options(intra_op_threads: int, *, spin: bool) -> onnxruntime.SessionOptions:
    """Options for the whole voice that serves a voice's first requests: open fast, and
    with ``spin``, run as piper's session does.

    A first request waits for the open and then one run of the whole graph. With graph
    optimisation off the open takes a third of a fully optimised one's and the run a few
    percent longer; spinning within each run (and only then: `force_spinning_stop`) wins
    that back when the run is alone, and loses more than that beside other requests'
    runs (docs/decisions.md, "First use of a voice").
    """
    return _options(intra_op_threads, onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL, spin=spin)


def _options(
    intra_op_threads: int, level: onnxruntime.GraphOptimizationLevel, *, spin: bool = False
) -> onnxruntime.SessionOptions:
    opts = onnxruntime.SessionOptions()
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if spin:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def new_run_options(*, shrink_arena: bool) -> onnxruntime.RunOptions:
    """Options for runs that hand the arena's free regions back at their end, or keep
    them (``shrink_arena`` is rejected by sessions opened without an arena)."""
    options = onnxruntime.RunOptions()
    if shrink_arena:
        options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
    return options


def shrink_shared_arena() -> None:
    """Hand the shared arena's free regions back to the OS (all of them, when no run is in
    flight): onnxruntime shrinks an arena only at the end of a run that asks it to, so a
    one-node session on the arena runs once."""
    session = onnxruntime.InferenceSession(
        SHRINK_MODEL,
        sess_options=session_options(1, shared_arena=True),
        providers=PROVIDERS,
    )
    session.run(None, {"x": np.zeros(1, dtype=np.float32)}, new_run_options(shrink_arena=True))
