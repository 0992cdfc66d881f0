"""ssmvae: semi-supervised multimodal VAEs (Suzuki & Matsuo) as a DVC pipeline."""

__version__ = "0.1.0"
