"""flowsuite.data: datasets and the shipped trained models."""
