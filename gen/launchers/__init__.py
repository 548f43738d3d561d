"""Launchers: start and stop a local inference server that gen then talks to as a teacher (`vllm serve`)."""
