"""The `vico` command line (contract.md lists the commands).

A user's mistake ends with one line on stderr and exit status 2, never a
traceback; the last stdout line of `vico run` is the version folder, and its exit
status is 3 when no video produced a question (the version is complete and empty).
Every command that prints a summary takes `--json` for the same facts as one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

EXIT_USER_ERROR = 2
EXIT_NO_QUESTIONS = 3  # the run finished but no video produced a question (contract.md)
# What `vico train` / `vico eval` import; the [model] extra installs them (pyproject.toml).
MODEL_PACKAGES = ("torch", "transformers", "safetensors", "matplotlib")
MODEL_INSTALL = "pip install -e '.[model]'"
# What the same command, run again after a Ctrl-C, goes on from (the last line of an interrupted run).
RESUMES = {
    "run": "; run the same command again to resume: the parts written so far are kept and not redone",
    "train": "; run the same command again to resume from the last checkpoint",
    "eval": "; run the same command again to resume: the needle cells measured so far are kept",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vico", description="Long-video instruction data (VICO) and Video-XL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, json_help: str = "print the summary as one JSON object on stdout"):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help=json_help)
        return p

    def with_config(name: str, help_text: str, example: str):
        p = add(name, help_text)
        p.add_argument("config", help="YAML config file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a config key (dotted), e.g. --set {example}")
        return p

    p = with_config("run", "run the pipeline; prints the version folder last", "clips.seconds=10")
    p.add_argument("--retry-failed", action="store_true",
                   help="when a complete version of this config has downloads that failed for reasons that "
                        "may pass (throttled, 5xx, timeouts), retry them in a new version")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's own progress bars and info logs too (as ray.progress: true)")

    p = add("demo-videos", "write synthetic long videos and a manifest listing them")
    p.add_argument("directory", help="folder for the videos and manifest.txt (created if missing)")
    p.add_argument("--count", type=int, default=3, help="number of videos (default 3)")
    p.add_argument("--minutes", type=float, default=2.0, help="length of each video in minutes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene script: the same seed, the same videos")

    p = add("versions", "list, show or diff dataset versions",
            json_help="the listing, the whole manifest or the diff as JSON (anywhere on the line)")
    # Everything after `versions`, `--json` included in any position (version_cli parses it).
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ROOT/NAME | show VERSION | diff A B")

    p = add("report", "a static HTML report of a version")
    p.add_argument("version", help="a complete version folder")
    p.add_argument("--out", default=None,
                   help="the HTML file (default: DATASET-VERSION-FINGERPRINT-report.html in the working directory)")
    p.add_argument("--force", action="store_true",
                   help="overwrite the --out file even when it holds another version's report or another file")

    p = add("export", "export question sets (LLaVA / Video-XL JSON + frames)")
    p.add_argument("version", help="a complete version folder")
    p.add_argument("--format", default="llava", choices=["llava"], help="the export format (llava: LLaVA / Video-XL JSON)")
    p.add_argument("--out", required=True, help="the export folder")
    p.add_argument("--allow-stand-in", action="store_true",
                   help="export data that stand-in engines (describe, template, rules) made, marked as such")

    p = with_config("submit", "submit the run as a Ray job to a running cluster", "clips.seconds=10")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray dashboard / job server address (default: $RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its result")
    p.add_argument("--retry-failed", action="store_true", help="as for `vico run`")
    p.add_argument("--insecure", action="store_true",
                   help="send the Ray token over plain http to a non-loopback address (default: refused)")

    p = with_config("train", "train a Video-XL model on a version's shards", "train.max_steps=30")
    p.add_argument("--resume", action="store_true",
                   help="resume the run folder's last checkpoint even under a changed config "
                        "(as --set train.resume=true); the same config always resumes")
    p.add_argument("--plan", action="store_true",
                   help="print the memory a GPU needs for this model and train.strategy (parameters, gradients, "
                        "optimizer state, activations) without building the model, and stop")
    p.add_argument("--new-schedule", action="store_true",
                   help="with --resume and a larger train.max_steps on a run whose schedule has ended: a fresh "
                        "warm-up and cosine from train.lr over the added steps (as --set train.new_schedule=true)")
    with_config("eval", "validate a Video-XL checkpoint (VICO QA, needle grid)", "eval.needle_frames=[4,16]")

    p = add("export-checkpoint", "a training run's checkpoint as one safetensors folder (the authors' key layout, "
                                 "a complete config.json); prints the folder")
    p.add_argument("run", help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the folder to write (new, or empty)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the weights' type (default float32, as trained)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(json_anywhere(sys.argv[1:] if argv is None else list(argv)))
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print(f"vico: interrupted{RESUMES.get(args.command, '')}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped reading (`| head`): not a failure to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a user's mistake gets one line; a bug keeps its traceback
        if _is_user_error(exc):
            print(f"vico: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


def json_anywhere(argv: list[str]) -> list[str]:
    """`--json` anywhere on the line, before the command too (`vico --json versions ROOT`): argparse
    knows it only after the command, so it is moved to the end."""
    if "--json" not in argv:
        return argv
    return [a for a in argv if a != "--json"] + ["--json"]


def _is_user_error(exc: Exception) -> bool:
    from vico_pipeline.errors import UserError

    return isinstance(exc, UserError)


def _dispatch(args) -> int:
    if args.command == "demo-videos":
        return _demo_videos(args)
    if args.command == "run":
        return _run(args)
    if args.command == "versions":
        from vico_pipeline import version_cli
        return version_cli.main(args.args + (["--json"] if args.json else []))
    if args.command == "report":
        from vico_pipeline.report import write_report
        path = write_report(args.version, args.out, force=args.force)
        _say({"report": path, "version_dir": args.version.rstrip("/")} if args.json else path)
        return 0
    if args.command == "export":
        from vico_pipeline.export import export_llava
        from vico_pipeline import storage
        path = export_llava(args.version, args.out, allow_stand_in=args.allow_stand_in)
        if args.json:  # the counts the text line gives: N of N questions exported, M left out
            counts = storage.read_json(storage.join(path, "export.json"))
            _say({"export": path, "format": args.format, "version_dir": args.version.rstrip("/"), "counts": counts})
        else:
            _say(path)
        return 0
    if args.command == "submit":
        from vico_pipeline.config import load_config
        from vico_pipeline.submit import submit
        config = load_config(args.config, args.overrides)
        return submit(args.config, config, args.overrides, address=args.address, wait=args.wait,
                      retry_failed=args.retry_failed, insecure=args.insecure)
    if args.command in ("train", "eval"):
        return _model(args)
    if args.command == "export-checkpoint":
        require_model_extra(args.command)
        from vico_pipeline.model.export import export_checkpoint
        path = str(export_checkpoint(args.run, args.out, args.dtype))
        _say({"export": path, "run": args.run, "dtype": args.dtype} if args.json else path)
        return 0
    raise AssertionError(args.command)


def _say(result) -> None:
    """A summary on stdout: the text, or one JSON object."""
    print(result if isinstance(result, str) else json.dumps(result))


def _demo_videos(args) -> int:
    from vico_pipeline import storage
    from vico_pipeline.demo import make_demo_videos

    storage.check_writable(args.directory, "the demo-videos folder")

    manifest = make_demo_videos(args.directory, count=args.count, minutes=args.minutes, seed=args.seed)
    if args.json:
        videos = [line.strip() for line in open(manifest) if line.strip() and not line.startswith("#")]
        _say({"manifest": manifest, "videos": videos, "minutes": args.minutes, "seed": args.seed})
    else:
        _say(manifest)
    return 0


def _run(args) -> int:
    """The version folder (or the summary as JSON) last on stdout; exit 3 when no video produced a question."""
    from vico_pipeline.config import load_config
    from vico_pipeline.run import run
    from vico_pipeline.summary import no_questions_line, run_summary

    overrides = args.overrides + (["ray.progress=true"] if args.verbose else [])
    path = run(load_config(args.config, overrides), retry_failed=args.retry_failed)
    summary = run_summary(path)
    _say(summary if args.json else path)
    if summary["questions"]["total"] == 0:
        sys.stdout.flush()  # the folder first, then the line that says why it is empty
        print(no_questions_line(summary), file=sys.stderr)
        return EXIT_NO_QUESTIONS
    return 0


def require_model_extra(command: str) -> None:
    """One line with the install command when the [model] extra is missing (not a ModuleNotFoundError)."""
    import importlib.util

    from vico_pipeline.errors import UserError

    missing = []
    for name in MODEL_PACKAGES:
        try:  # found without importing it (transformers warns on import when torch is missing)
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise UserError(f"`vico {command}` needs the model extra ({', '.join(missing)} not installed); "
                        f"install it from the vico checkout with: {MODEL_INSTALL}")


def _model(args) -> int:
    import contextlib

    from vico_pipeline.config import load_config

    require_model_extra(args.command)
    from vico_pipeline.model import cli as model_cli

    overrides = args.overrides + (["train.resume=true"] if getattr(args, "resume", False) else [])
    overrides += ["train.new_schedule=true"] if getattr(args, "new_schedule", False) else []
    config = load_config(args.config, overrides)
    if getattr(args, "plan", False):
        return model_cli.plan_main(config, args.json)
    entry = model_cli.train_main if args.command == "train" else model_cli.eval_main
    if not args.json:
        return entry(config)
    printed = io.StringIO()  # with --json, stdout holds only the JSON: what the entry prints goes to stderr too
    with contextlib.redirect_stdout(_Tee(printed, sys.stderr)):
        status = entry(config)
    lines = [line for line in printed.getvalue().splitlines() if line.strip()]
    _say(_model_summary(args.command, lines[-1].strip() if lines else None))
    return status


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def _model_summary(command: str, output: str | None) -> dict:
    """`vico train --json`: the run folder and its last logged step; `vico eval --json`: results.json."""
    result = {"output": output}
    if output and command == "train" and os.path.exists(os.path.join(output, "metrics.jsonl")):
        lines = [line for line in open(os.path.join(output, "metrics.jsonl")) if line.strip()]
        result["last_metrics"] = json.loads(lines[-1]) if lines else None
    if output and command == "eval" and os.path.exists(os.path.join(output, "results.json")):
        result["results"] = json.load(open(os.path.join(output, "results.json")))
    return result


if __name__ == "__main__":
    # Run the imported module's main, so `python -m` sees the same exception classes as `vico`.
    from vico_pipeline.cli import main as package_main
    sys.exit(package_main())
