"""codegemma: CodeGemma end to end, from data to evaluation."""

__version__ = "0.1.0"
