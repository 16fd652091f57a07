"""One copy of each video: the same footage uploaded twice (re-encoded, resized, cropped, trimmed)
is found by the perceptual hashes of its training frames, and only one copy is kept.

The frames stage hashes every training frame (pHash, 64 bits, `train_frame_hashes`; robust to
re-encoding, scaling and small crops). Two videos are copies when, at one time offset between
them (a trim shifts the frames), most frames of their overlap have near-equal hashes:

- candidates: frames sharing one 16-bit quarter of their hash exactly vote for the offset
  between them (hashes found in many videos, such as black frames, do not vote);
- check: at the best offsets, the share of overlapping frames within MAX_BITS bits of each other.

A video that copies another one of the version is dropped with a `duplicate_of` error row
naming the copy kept: the longest, then the one of most pixels, then the smallest video id. So
the two can never land in train and val. It runs in the driver once the videos' frames exist
(vico_pipeline/run.py), over the version's videos; no Ray, plain numpy.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

# Hashes within this many bits (of 64) are the same picture (pHash's usual threshold is ~10)
# when their colour codes are also within MAX_COLOUR levels (of 32) in every quarter and channel.
MAX_BITS = 10
MAX_COLOUR = 3
# The share of overlapping frames that must match, and the least overlap (frames, and share of
# the shorter video), for two videos to be copies.
MIN_MATCH = 0.7
MIN_FRAMES = 20
MIN_COVER = 0.5
# A 16-bit quarter hash found in more than this many videos tells nothing (flat frames): no vote.
COMMON_VIDEOS = 8
OFFSETS_CHECKED = 3
VOTES_PER_VIDEO = 16


@dataclass
class Video:
    video_id: str
    duration_s: float
    pixels: int  # width x height
    hashes: np.ndarray  # uint64 pHash, one a training frame, in time order
    colours: np.ndarray  # (frames, 12) mean colour of each quarter, 0-31 a channel


@dataclass
class Match:
    share: float  # matching frames / overlapping frames
    overlap: int
    offset: int  # frames of b after those of a


def _bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between two arrays of uint64 hashes."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def compare(a: Video, b: Video, offset: int) -> Match:
    """Frame i of a against frame i + offset of b, over their overlap."""
    lo, hi = max(0, -offset), min(len(a.hashes), len(b.hashes) - offset)
    if hi <= lo:
        return Match(0.0, 0, offset)
    close = _bits(a.hashes[lo:hi], b.hashes[lo + offset:hi + offset]) <= MAX_BITS
    colour = np.abs(a.colours[lo:hi].astype(np.int16) - b.colours[lo + offset:hi + offset]).max(axis=1) <= MAX_COLOUR
    return Match(round(float((close & colour).mean()), 4), hi - lo, offset)


def is_copy(match: Match, a: Video, b: Video) -> bool:
    shorter = min(len(a.hashes), len(b.hashes))
    return match.share >= MIN_MATCH and match.overlap >= min(MIN_FRAMES, shorter) \
        and match.overlap >= MIN_COVER * shorter


def find_matches(videos: list[Video]) -> list[tuple[str, str, Match]]:
    """(a, b, match) for each pair of videos that are copies of each other."""
    index: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)  # (quarter, value) -> (video, frame)
    for v, video in enumerate(videos):
        for i, h in enumerate(video.hashes.tolist()):
            for q in range(4):
                index[(q, (h >> (16 * q)) & 0xFFFF)].append((v, i))
    votes: dict[tuple[int, int], Counter] = defaultdict(Counter)
    for entries in index.values():
        if len({v for v, _ in entries}) < 2 or len({v for v, _ in entries}) > COMMON_VIDEOS:
            continue
        # A still shot repeats one hash: a few of its frames vote, so the cost stays linear.
        seen: Counter = Counter()
        entries = [e for e in entries if (seen.update([e[0]]) or seen[e[0]]) <= VOTES_PER_VIDEO]
        for k, (v, i) in enumerate(entries):
            for w, j in entries[k + 1:]:
                if v < w:
                    votes[(v, w)][j - i] += 1
                elif w < v:
                    votes[(w, v)][i - j] += 1
    out = []
    for (v, w), offsets in votes.items():
        a, b = videos[v], videos[w]
        best = max((compare(a, b, d) for d, _ in offsets.most_common(OFFSETS_CHECKED)),
                   key=lambda m: m.share)
        if is_copy(best, a, b):
            out.append((a.video_id, b.video_id, best))
    return out


def keeper_order(video: Video) -> tuple:
    """The copy kept: the longest, then the most pixels, then the smallest id."""
    return (-video.duration_s, -video.pixels, video.video_id)


def duplicates(videos: list[Video]) -> dict[str, tuple[str, Match]]:
    """{dropped video id: (the video id kept, the match)}: every group of copies keeps one."""
    by_id = {v.video_id: v for v in videos}
    parent = {v.video_id: v.video_id for v in videos}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    matches = find_matches(videos)
    for a, b, _ in matches:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = defaultdict(list)
    for vid in parent:
        groups[root(vid)].append(vid)
    best_match = {}
    for a, b, m in matches:
        best_match[a] = best_match.get(a) or (b, m)
        best_match[b] = best_match.get(b) or (a, m)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        kept = min(members, key=lambda vid: keeper_order(by_id[vid]))
        for vid in members:
            if vid != kept:
                out[vid] = (kept, best_match[vid][1])
    return out


def video(video_id: str, duration_s: float, pixels: int, hashes: list[int], colours: list[int]) -> Video:
    """A Video from the stored int64 hashes and colour codes (stages/frames.py frame_hash)."""
    codes = np.array(colours, dtype=np.int64).reshape(-1, 1)
    return Video(video_id, float(duration_s or 0.0), int(pixels or 0), np.array(hashes, dtype=np.int64).view(np.uint64),
                 ((codes >> (5 * np.arange(12))) & 31).astype(np.uint8))
