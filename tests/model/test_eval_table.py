"""What `vico eval` shows: a line per needle cell as it finishes, and tables at the end (needle
accuracy by method and frame count; VICO QA per task against chance)."""

import json
import re
import types

import pytest

from vico_pipeline.model.eval_table import CellPrinter, cell_line, needle_table, qa_table, results_table


def _cell(method, frames, depth, accuracy, status="ok", **extra):
    return {"method": method, "task": "retrieval", "style": "frame", "frames": frames, "depth": depth,
            "scoring": "letter", "accuracy": accuracy, "status": status, "chance": 1 / 256, **extra}


CELLS = [_cell("vst-r2", 4, 0.0, 1.0), _cell("vst-r2", 4, 1.0, 0.5), _cell("vst-r2", 16, 0.0, 0.0),
         _cell("vst-r2", 16, 1.0, 0.0), _cell("intp", 4, 0.0, None, "skipped", skipped="needs 8 frames"),
         _cell("intp", 4, 1.0, None, "skipped"), _cell("intp", 16, 0.0, 0.5), _cell("intp", 16, 1.0, None, "oom")]


def test_needle_table_is_accuracy_by_method_and_frame_count():
    lines = needle_table(CELLS)
    assert lines[0] == "needle accuracy by frame count (mean over 2 depths; chance 0.39% = 1/256)"
    assert lines[1].split() == ["method", "4", "frames", "16", "frames"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows == {"vst-r2": ["75.0%", "0.0%"], "intp": ["skip", "OOM"]}


def test_needle_table_names_what_varies():
    cells = CELLS[:2] + [dict(c, scoring="teacher_forced", accuracy=0.0) for c in CELLS[:2]]
    lines = needle_table(cells)
    assert lines[1].split()[:2] == ["method", "scoring"]
    assert [line.split()[:3] for line in lines[2:]] == [["vst-r2", "letter", "75.0%"], ["vst-r2", "teacher_forced", "0.0%"]]


def test_qa_table_is_accuracy_per_task_against_chance():
    results = {"vico_qa": {"event_order": 0.5, "gap": 0.0}, "vico_qa_chance": {"event_order": 0.25, "gap": 0.25},
               "vico_qa_count": {"event_order": 4, "gap": 2}, "vico_qa_letter": {}}
    lines = qa_table(results)
    assert lines[1].split() == ["task", "questions", "accuracy", "chance"]
    assert lines[2].split() == ["event_order", "4", "50.0%", "25.0%"]
    assert lines[3].split() == ["gap", "2", "0.0%", "25.0%"]
    assert lines[4].split() == ["all", "6", "33.3%", "25.0%"]  # weighted by questions
    assert qa_table({"vico_qa": {}, "note": "no val shards in v1"}) == ["VICO QA: no val question (no val shards in v1)"]
    text = results_table({**results, "needle": CELLS})
    assert text.index("needle accuracy") < text.index("VICO QA")


def test_a_line_per_cell_once():
    said = []
    printer = CellPrinter(2, said.append)
    printer(CELLS[:1])
    printer(CELLS[:2])  # every cell known so far: only the new one is printed
    assert said == ["needle vst-r2 retrieval 4 frames depth 0%: 2/2 right (letter; chance 0.39%)",
                    "needle vst-r2 retrieval 4 frames depth 100%: 1/2 right (letter; chance 0.39%)"]
    assert cell_line(CELLS[4]) == "needle intp retrieval 4 frames depth 0%: skipped (needs 8 frames)"
    assert cell_line(CELLS[7]).endswith("out of memory")


def test_vico_eval_prints_cells_then_tables_then_the_folder(tmp_path, tiny_model_config, version_dir, capsys):
    pytest.importorskip("torch")
    from vico_pipeline.model.cli import eval_main, train_main
    from vico_pipeline.model.config import EvalConfig, TrainConfig

    cfg = types.SimpleNamespace(
        model=tiny_model_config(),
        train=TrainConfig(cpu_threads=1, data=str(version_dir), output=str(tmp_path / "run"), max_steps=1,
                          max_frames=4, checkpoint_every=1),
        eval=EvalConfig(cpu_threads=1, checkpoint=str(tmp_path / "run"), output=str(tmp_path / "eval"),
                        needle_frames=[2, 4], needle_depths=[0.0, 1.0], needle_trials=1, methods=["vst"], ratios=[2]),
    )
    assert train_main(cfg) == 0
    capsys.readouterr()
    assert eval_main(cfg) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(tmp_path / "eval")  # the folder stays last on stdout
    err = captured.err.splitlines()
    cells = [line for line in err if line.startswith("needle vst-r2 retrieval")]
    assert len(cells) == 4 and all(re.search(r": [01]/1 right \(letter", line) for line in cells), err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    table = err[err.index(next(line for line in err if line.startswith("needle accuracy"))):]
    assert table[1].split() == ["method", "2", "frames", "4", "frames"]
    by_frames = {c["frames"]: [] for c in results["needle"]}
    for c in results["needle"]:
        by_frames[c["frames"]].append(c["accuracy"])
    assert table[2].split() == ["vst-r2", *(f"{sum(v) / len(v):.1%}" for _, v in sorted(by_frames.items()))]
    qa = table[table.index(next(line for line in table if line.startswith("VICO QA"))):]
    for task, accuracy in results["vico_qa"].items():
        row = next(line.split() for line in qa if line.startswith(task))
        assert row[2] == f"{accuracy:.1%}" and row[-1] == f"{results['vico_qa_chance'][task]:.1%}"


def test_qa_table_with_a_task_lost_to_out_of_memory():
    results = {"vico_qa": {"temporal_order": 0.5, "counting": None}, "vico_qa_count": {"temporal_order": 2, "counting": 0},
               "vico_qa_chance": {"temporal_order": 0.25, "counting": 0.25}, "vico_qa_oom": {"counting": 2},
               "vico_qa_letter": {"temporal_order": 1.0, "counting": None}}
    lines = qa_table(results)
    counting = next(line for line in lines if line.startswith("counting"))
    assert "0 (2 oom)" in counting and counting.split()[-3:] == ["-", "-", "25.0%"]
    total = next(line for line in lines if line.startswith("all"))
    assert total.split()[1:4] == ["2", "50.0%", "100.0%"]  # the mean is over answered questions only
