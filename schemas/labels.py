"""FER2013 classes in the canonical order of the `emotion` column of fer2013.csv (not alphabetical)."""

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASSES)
