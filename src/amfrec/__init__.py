"""AMFRec: a frozen causal LM recommends the next item from multimodal soft tokens."""

__version__ = "0.1.0"
