"""Prefix-tuning (Li & Liang, ACL 2021) for Hugging Face causal language models."""

__version__ = "0.1.0"
