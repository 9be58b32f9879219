"""Faces followed across a video's sampled frames, and their expressions over time.

`FaceTracker` links each frame's detected faces to tracks by IoU with where each track is expected to be, solved as
one assignment (Hungarian, scipy's `linear_sum_assignment`, as SORT and ByteTrack do). A track's expected box is its
last box moved by its velocity (pixels per second, a running average of its steps), so a face hidden for a moment
by another that crosses it is found again where it comes out rather than starting a new track; a track unseen for
`max_lost_s` ends. (Roboflow's `trackers` 2.6, where supervision's ByteTrack now lives, was tried first: it gives a
face no id in the frame where it first appears, whatever `minimum_consecutive_frames` says, so every track would
lose its first frame; it also requires opencv-python, which would replace the headless OpenCV served here.)

`Smoother` keeps an exponential moving average per track with a time constant: after a gap of dt seconds the new
frame's probabilities weigh 1 - exp(-dt / tau), so the smoothing does not depend on the sampling rate.
"""

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.faces import Box, iou_matrix


@dataclass
class Track:
    id: int
    box: np.ndarray  # the last box seen, float x y w h
    time: float  # when it was seen
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # of x y w h, per second

    def expected(self, time: float) -> np.ndarray:
        box = self.box + self.velocity * (time - self.time)
        box[2:] = np.maximum(box[2:], 1.0)
        return box


class FaceTracker:
    def __init__(self, min_iou: float = 0.1, max_lost_s: float = 1.5, velocity_weight: float = 0.5):
        self.min_iou = min_iou
        self.max_lost_s = max_lost_s
        self.velocity_weight = velocity_weight  # the newest step's weight in the velocity's running average
        self.tracks: list[Track] = []
        self.next_id = 1

    def update(self, boxes: list[Box], time: float) -> list[int]:
        """The track id of each of a frame's `boxes` (frames in time order); unmatched boxes start tracks."""
        self.tracks = [track for track in self.tracks if time - track.time <= self.max_lost_s]
        found = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        expected = np.array([track.expected(time) for track in self.tracks]).reshape(-1, 4)
        overlap = iou_matrix(expected, found)
        ids = [0] * len(boxes)
        if overlap.size:
            for row, column in zip(*linear_sum_assignment(overlap, maximize=True)):
                if overlap[row, column] >= self.min_iou:
                    ids[column] = self._follow(self.tracks[row], found[column], time)
        # new tracks numbered left to right, top to bottom: ids do not hang on the order of near-equal scores
        for column in sorted((c for c, track_id in enumerate(ids) if not track_id), key=lambda c: tuple(found[c][:2])):
            track = Track(self.next_id, found[column], time)
            self.next_id += 1
            self.tracks.append(track)
            ids[column] = track.id
        return ids

    def _follow(self, track: Track, box: np.ndarray, time: float) -> int:
        elapsed = time - track.time
        if elapsed > 0:
            step = (box - track.box) / elapsed
            track.velocity = self.velocity_weight * step + (1 - self.velocity_weight) * track.velocity
        track.box, track.time = box, time
        return track.id


class Smoother:
    """Per track: an exponential moving average of the probabilities with time constant `tau_s` (0: none)."""

    def __init__(self, tau_s: float):
        self.tau_s = tau_s
        self.state: dict[int, tuple[float, np.ndarray]] = {}

    def __call__(self, track_id: int, time: float, probabilities: np.ndarray) -> np.ndarray:
        previous = self.state.get(track_id)
        if previous is None or self.tau_s <= 0:
            smoothed = probabilities
        else:
            weight = 1 - math.exp(-max(0.0, time - previous[0]) / self.tau_s)
            smoothed = previous[1] + weight * (probabilities - previous[1])
        self.state[track_id] = (time, smoothed)
        return smoothed


@dataclass
class TrackTally:
    frames: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    probability_sum: np.ndarray | None = None
    label_counts: np.ndarray | None = None

    def add(self, time: float, probabilities: np.ndarray, smoothed: np.ndarray) -> None:
        if self.frames == 0:
            self.first_time = time
            self.probability_sum = np.zeros_like(probabilities, dtype=np.float64)
            self.label_counts = np.zeros(len(probabilities), dtype=np.int64)
        self.frames += 1
        self.last_time = time
        self.probability_sum += probabilities
        self.label_counts[int(np.argmax(smoothed))] += 1

    def share(self) -> np.ndarray:
        """Of the track's sampled frames, the fraction whose smoothed label is each class."""
        return self.label_counts / max(1, self.frames)

    def mean(self) -> np.ndarray:
        return self.probability_sum / max(1, self.frames)
