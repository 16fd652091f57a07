"""Shared tiny fixtures for the Video-XL model tests."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _tiny_model_config(**kw):
    from vico_pipeline.model.config import ModelConfig

    base = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                rope_theta=10000.0, image_size=56, patch_size=14, vision_hidden_size=32, vision_layers=2,
                vision_heads=2, vision_intermediate_size=64, window_tokens=8, ratios=[2, 4], ratio=4)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_model_config():
    """A factory: tiny_model_config(**overrides) -> ModelConfig (hidden 32, 2 layers, 4 tokens a frame)."""
    return _tiny_model_config


TASKS = ["temporal_order", "counting"]


def _jpeg(color, size=(64, 48)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def write_version(root, n_train=3, n_val=2, n_frames=6):
    """A version folder with shards/{train,val} and questions/ in the contract's columns."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    colors = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    questions = []
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            vid = f"{split}{i}"
            frames = [_jpeg(colors[(i + k) % len(colors)]) for k in range(n_frames)]
            conv, row_questions = [], []
            for q, task in enumerate(TASKS):
                options = [colors[(i + q + j) % len(colors)] for j in range(4)]
                answer = q % 4
                text = f"Which colour came first? ({task})"
                conv += [{"from": "human", "value": ("<video>\n" if q == 0 else "") + text},
                         {"from": "gpt", "value": f"({'ABCD'[answer]}) {options[answer]}"}]
                questions.append({"question_id": f"{vid}-q{q}", "video_id": vid, "task": task, "question": text,
                                  "options": options, "answer": options[answer], "answer_index": answer,
                                  "evidence_clip_ids": [], "split": split})
                # The shard row's own list: one question a training sample (contract.md "shards").
                row_questions.append({"question_id": f"{vid}-q{q}", "task": task, "options": options,
                                      "answer_index": answer, "evidence_clip_ids": [], "evidence_windows_s": [],
                                      "conversations": [{"from": "human", "value": "<video>\n" + text}, conv[-1]]})
            rows.append({"sample_id": vid, "video_id": vid, "duration_s": float(n_frames), "frames": frames,
                         "frame_times_s": [float(k) for k in range(n_frames)], "conversations": conv,
                         "questions": row_questions, "split": split})
        folder = root / "shards" / split
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000.parquet")
    (root / "questions").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(questions), root / "questions" / "part-00000.parquet")
    return root


@pytest.fixture
def version_dir(tmp_path):
    return write_version(tmp_path / "demo" / "v1")


@pytest.fixture(scope="session")
def make_version():
    """A factory: make_version(folder, n_train=3, n_val=2, n_frames=6) -> a version folder."""
    return write_version
