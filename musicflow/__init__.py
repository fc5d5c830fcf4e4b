"""flowsuite.musicflow: mel front end, WaveGlow vocoder and mel prior."""

from flowsuite.musicflow.mel import AudioShapeError, MelSpectrogram, mel_filterbank
from flowsuite.musicflow.waveglow import PRESETS, MelUpsampler, WaveGlow
from flowsuite.musicflow.wavenet import WaveNet

__all__ = ["PRESETS", "AudioShapeError", "MelSpectrogram", "MelUpsampler", "WaveGlow", "WaveNet",
           "mel_filterbank"]
