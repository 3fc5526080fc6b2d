"""Demonstration data: the episode file format, the recorder, the dataset tools and exports."""
