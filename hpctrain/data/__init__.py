"""Data for training: samplers that partition samples across ranks, and the sources they index into."""
