"""bench/hour.py on a 1-minute video, offline engines only: the bench runs end to end and the
version manifest carries what it reads (each stage's workers' peak memory, the largest prompt
of the clue and summary steps against the room that clues.context_tokens leaves)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_hour_bench_records_memory_and_prompt_sizes(tmp_path):
    out = tmp_path / "results.json"
    subprocess.run([sys.executable, os.path.join(REPO, "bench", "hour.py"), "--minutes", "1", "--offline-only",
                    "--context", "2048", "--max-tokens", "256", "--work", str(tmp_path), "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=600,
                   env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    results = json.loads(out.read_text())
    one = results["1min"]
    assert one["video"]["size"] == "640x360" and 55 <= one["video"]["duration_s"] <= 65
    assert one["bare_decode_s"] > 0 and "served" not in one
    run = one["offline"]
    assert run["exit_code"] in (0, 3) and run["wall_over_decode"] > 0
    stages = run["stages"]
    # Every stage that worked on the video reports its worker's peak memory.
    for name in ("download", "frames", "filter", "caption", "summaries", "clues"):
        assert stages[name]["items_in"] == 1
        assert 10 * 2**20 < stages[name]["peak_rss_bytes"] < 64 * 2**30, name
    # The clue and summary steps sent prompts, none over the room the context leaves for them.
    for name in ("summaries", "clues"):
        assert stages[name]["prompt_tokens_room"] == 2048 - 256
        assert 0 < stages[name]["max_prompt_tokens"] <= stages[name]["prompt_tokens_room"]
    assert run["processes"]["driver_peak_rss_bytes"] > 0 and run["processes"]["tree_peak_pss_bytes"] > 0
    assert run["rows"]["clips"] == stages["frames"]["items_out"] > 0
    # Each stage again alone in a fresh process (its own peak, no other stage's in it).
    alone = run["stages_alone"]
    assert {"frames", "filter", "caption", "summaries", "clues"} <= set(alone)
    assert all(s["added_bytes"] == s["peak_rss_bytes"] - s["before_bytes"] and s["peak_rss_bytes"] > 10 * 2**20
               and s["seconds"] >= 0 for s in alone.values())
    assert run["stage_memory_under_2gib"] == all(s.get("peak_rss_bytes", 0) <= 2 * 2**30 for s in stages.values())


def test_peak_memory_covers_what_ran_since_the_reset():
    from stages.base import peak_memory, reset_peak_memory

    if not reset_peak_memory():
        return  # not Linux: peak_memory is the lifetime ru_maxrss, nothing to reset
    before = peak_memory()["peak_rss_bytes"]
    block = b"\x01" * (256 * 2**20)  # written, so every page is resident
    del block
    assert peak_memory()["peak_rss_bytes"] >= before + 200 * 2**20
    reset_peak_memory()
    assert peak_memory()["peak_rss_bytes"] < before + 100 * 2**20
