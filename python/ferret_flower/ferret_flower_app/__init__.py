"""Ferret on Flower: fine-tune the demo's model (MiniLM on the health tweets) across SuperNodes."""
