"""flowsuite.musicflow: mel front end, WaveGlow vocoder and mel prior."""

from flowsuite.musicflow.generator import MusicGenerator
from flowsuite.musicflow.mel import AudioShapeError, MelSpectrogram, mel_filterbank
from flowsuite.musicflow.prior import MelPrior
from flowsuite.musicflow.waveglow import PRESETS, MelUpsampler, WaveGlow
from flowsuite.musicflow.wavenet import WaveNet

__all__ = ["PRESETS", "AudioShapeError", "MelPrior", "MelSpectrogram", "MelUpsampler",
           "MusicGenerator", "WaveGlow", "WaveNet", "mel_filterbank"]
