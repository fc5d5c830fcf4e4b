"""flowsuite.musicflow: mel front end, WaveGlow vocoder and mel prior."""
