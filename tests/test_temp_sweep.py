"""A SIGKILL between a temp file's creation and its rename leaves `.tmp-*` behind; the run that
completes a version removes those older than itself (tests/test_resume.py kills real runs)."""

import os
import time

from vico_pipeline import storage


def test_sweep_removes_temp_files_older_than_the_run_and_keeps_the_rest(tmp_path):
    old = tmp_path / "clips" / ".tmp-aaaa-part-00000.parquet"
    new = tmp_path / ".tmp-bbbb-.claim.2.json"
    kept = tmp_path / "clips" / "part-00000.parquet"
    for path in (old, new, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    started = time.time()
    os.utime(old, (started - 30, started - 30))
    os.utime(kept, (started - 30, started - 30))
    os.utime(new, (started + 1, started + 1))  # written while the run goes on
    assert storage.sweep_temp_files(str(tmp_path), started) == 1
    assert not old.exists() and new.exists() and kept.exists()  # a newer temp may be a write under way
    assert storage.sweep_temp_files("s3://bucket/v1", started) == 0  # one PUT a write: no temp files
