"""What the notebooks and scripts share, kept out of the lesson: the checkpoint folders' rules, the checks that
refuse a bad folder, Meta's layout, the demo build, the hub download, the SmolLM2 conversion, and the rules of
the model family that all three implementations follow (vocabulary.py)."""
