"""Split a Piper (VITS) ONNX voice into a per-utterance frontend and frame-local decoders.

The frontend (text encoder, duration predictor, alignment, prior sampling) runs once per
utterance; the decoder (flow + HiFi-GAN) is convolutional over frames, so it can be run on
overlapping windows of the latent and streamed. The decoder is cut once more, between the
flow and the vocoder: the flow is cheap per frame but reaches 32 frames each way, the
vocoder is most of the cost but reaches only ~12, so running the flow over a whole
utterance once and the vocoder in windows re-decodes far fewer frames at chunk seams.
Seams are found from the graph structure (never node names, `graph`), margins from the
convolution geometry (`reach`), and the parts (`build`) are cached on disk, keyed by the
model's sha256 (`cache`).
"""

from .cache import SplitModel, VocoderSplit, VocoderStage
from .lookup import cached_verdict, split_voice_model

__all__ = [
    "SplitModel",
    "VocoderSplit",
    "VocoderStage",
    "cached_verdict",
    "split_voice_model",
]
