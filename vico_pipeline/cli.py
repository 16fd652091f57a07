"""The `vico` command line (contract.md lists the commands).

A user's mistake ends with one line on stderr and a non-zero exit, never a
traceback; the last stdout line of `vico run` is the version folder.
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vico", description="Long-video instruction data (VICO) and Video-XL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML config file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (dotted), e.g. --set clips.seconds=10")
        return p

    p = with_config("run", "run the pipeline; prints the version folder last")
    p.add_argument("--retry-failed", action="store_true",
                   help="when a complete version of this config has downloads that failed for reasons that "
                        "may pass (throttled, 5xx, timeouts), retry them in a new version")
    p = sub.add_parser("demo-videos", help="write synthetic long videos and a manifest")
    p.add_argument("directory")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("versions", help="list, show or diff dataset versions")
    p.add_argument("args", nargs="+", metavar="ROOT/NAME | show VERSION | diff A B")

    p = sub.add_parser("report", help="a static HTML report of a version")
    p.add_argument("version")
    p.add_argument("--out", default=None)

    p = sub.add_parser("export", help="export question sets (LLaVA / Video-XL JSON + frames)")
    p.add_argument("version")
    p.add_argument("--format", default="llava", choices=["llava"])
    p.add_argument("--out", required=True)

    p = with_config("submit", "submit the run as a Ray job to a running cluster")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray dashboard / job server address (default: $RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its result")
    p.add_argument("--retry-failed", action="store_true", help="as for `vico run`")

    with_config("train", "train a Video-XL model on a version's shards")
    with_config("eval", "validate a Video-XL checkpoint (VICO QA, needle grid)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("vico: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a user's mistake gets one line; a bug keeps its traceback
        if _is_user_error(exc):
            print(f"vico: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


def _is_user_error(exc: Exception) -> bool:
    from stages.base import MissingPackage
    from stages.manifest import ManifestError
    from vico_pipeline.config import ConfigError
    from vico_pipeline.errors import UserError
    from vico_pipeline.model.config import ModelUserError

    return isinstance(exc, (ConfigError, ManifestError, MissingPackage, ModelUserError, UserError))


def _dispatch(args) -> int:
    from vico_pipeline.config import load_config

    if args.command == "demo-videos":
        from vico_pipeline.demo import make_demo_videos
        manifest = make_demo_videos(args.directory, count=args.count, minutes=args.minutes, seed=args.seed)
        print(manifest)
        return 0
    if args.command == "run":
        from vico_pipeline.run import run
        config = load_config(args.config, args.overrides)
        print(run(config, retry_failed=args.retry_failed))
        return 0
    if args.command == "versions":
        from vico_pipeline import version_cli
        return version_cli.main(args.args)
    if args.command == "report":
        from vico_pipeline.report import write_report
        print(write_report(args.version, args.out))
        return 0
    if args.command == "export":
        from vico_pipeline.export import export_llava
        print(export_llava(args.version, args.out))
        return 0
    if args.command == "submit":
        from vico_pipeline.submit import submit
        config = load_config(args.config, args.overrides)
        return submit(args.config, config, args.overrides, address=args.address, wait=args.wait,
                      retry_failed=args.retry_failed)
    if args.command in ("train", "eval"):
        from vico_pipeline.model import cli as model_cli
        config = load_config(args.config, args.overrides)
        return model_cli.train_main(config) if args.command == "train" else model_cli.eval_main(config)
    raise AssertionError(args.command)


if __name__ == "__main__":
    # Run the imported module's main, so `python -m` sees the same exception classes as `vico`.
    from vico_pipeline.cli import main as package_main
    sys.exit(package_main())
