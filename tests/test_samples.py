"""One question a sample: time header and evidence-aware frame selection (vico_pipeline/samples.py)."""
from vico_pipeline.samples import format_time, question_sample, select_frames, time_header, with_time_header


def test_format_time_rounds_down_and_switches_to_hours():
    assert format_time(0) == "00:00"
    assert format_time(59.99) == "00:59"
    assert format_time(3599.9) == "59:59"
    assert format_time(3600) == "1:00:00"
    assert format_time(3734.5) == "1:02:14"


def test_time_header_names_every_frame_in_order():
    header = time_header(3734.0, [0.0, 29.5, 58.0])
    assert header == "The video lasts 1:02:14. Its 3 frames shown here were taken at 00:00, 00:29, 00:58."


def test_select_frames_keeps_a_frame_in_every_evidence_window():
    times = [float(t) for t in range(3600)]  # 1 fps, one hour
    windows = [(14 * 7, 14 * 8), (14 * 100, 14 * 101), (14 * 255, 14 * 256)]
    chosen = select_frames(times, 128, windows, seed="q1")
    assert len(chosen) == 128 and chosen == sorted(set(chosen))
    for start, end in windows:
        assert any(start <= times[i] < end for i in chosen)
    # spread evenly: one frame from each of the 128 equal stretches of the video
    plain = select_frames(times, 128, [], seed="q1")
    bounds = [3600 * k // 128 for k in range(129)]
    assert all(sum(bounds[k] <= i < bounds[k + 1] for i in plain) == 1 for k in range(128))
    assert select_frames(times, 128, windows, seed="q1") == chosen  # seeded: the same sample every epoch


def test_the_evidence_frame_cannot_be_told_from_the_others():
    """The frame kept for the evidence sits in its stretch like any other frame: the frame farthest
    from the middle of its stretch is the evidence frame no more often than chance."""
    import random

    rng = random.Random(3)
    times = [float(t) for t in range(3600)]
    stretch = 3600 / 128
    outliers = 0
    for q in range(300):
        clip = rng.randrange(257)
        window = (14.0 * clip, 14.0 * clip + 14)
        chosen = select_frames(times, 128, [window], seed=f"q{q}")
        evidence = next(i for i in chosen if window[0] <= times[i] < window[1])
        offsets = {i: abs(i - (i // stretch + 0.5) * stretch) for i in chosen}
        outliers += max(offsets, key=offsets.get) == evidence
    assert outliers <= 300 * 0.05  # an even grid with the evidence frame moved onto it: nearly every time


def test_select_frames_refuses_evidence_that_cannot_fit():
    times = [0.0, 10.0, 20.0, 30.0]
    assert select_frames(times, 2, [(0, 5), (10, 15), (20, 25)]) is None  # 3 windows, 2 frames
    assert select_frames(times, 4, [(40, 50)]) is None                   # no frame inside at all
    assert select_frames(times, 0, [(0, 5)]) == [0, 1, 2, 3]


def test_question_sample_header_matches_the_frames_given():
    row = {"duration_s": 100.0, "frame_times_s": [float(t) for t in range(0, 100, 5)]}
    question = {"conversations": [{"from": "human", "value": "<video>\nWhich comes first?"},
                                  {"from": "gpt", "value": "(B)"}],
                "evidence_windows_s": [[42.0, 56.0]]}
    sample = question_sample(row, question, max_frames=4)
    assert len(sample["frame_indices"]) == 4
    assert any(42 <= t < 56 for t in sample["frame_times_s"])
    human = sample["conversations"][0]["value"]
    assert human.startswith("<video>\nThe video lasts 01:40. Its 4 frames shown here were taken at ")
    assert human.endswith("\nWhich comes first?")
    listed = human.split("taken at ", 1)[1].split(".", 1)[0].split(", ")
    assert listed == [format_time(t) for t in sample["frame_times_s"]]
    assert sample["conversations"][1] == {"from": "gpt", "value": "(B)"}


def test_with_time_header_puts_video_token_once():
    conv = with_time_header([{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A"},
                             {"from": "human", "value": "<video>\nQ2"}], 10.0, [1.0])
    assert conv[0]["value"].startswith("<video>\nThe video lasts 00:10. Its one frame")
    assert "<video>" not in conv[2]["value"] and conv[2]["value"] == "Q2"


def test_two_time_answers_order_their_clips_for_a_later_turn():
    """at_time on clip 25 and clue_time on clip 16 give both times: 'is 16 before 25?' is answered."""
    from vico_pipeline.samples import gives_away

    earlier = [{"task": "at_time", "evidence_clip_ids": ["c25"]}, {"task": "clue_time", "evidence_clip_ids": ["c16"]}]
    assert gives_away(earlier, {"task": "before_after", "evidence_clip_ids": ["c16", "c25"]})
    assert not gives_away(earlier[:1], {"task": "before_after", "evidence_clip_ids": ["c16", "c25"]})
