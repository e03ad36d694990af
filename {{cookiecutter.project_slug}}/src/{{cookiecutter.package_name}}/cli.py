"""One entry point, one sub-command per pipeline stage:

    python -m <package> COMMAND -c configs/<exp>.yaml [--fold K|all] [key=value ...]

Bad input ends with one line, `error: ...`, and exit status 2. Ctrl-C ends with one line, `interrupted: ...`, and
exit status 130 (128 + SIGINT, what a shell reports for a program stopped by Ctrl-C); `train` then says where it
stopped, and the same command resumes from there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .config import Config, load, seed_members
from .core.errors import Interrupted, UserError
from .core.tasks import TASKS


@dataclass
class Command:
    run: Callable[[argparse.Namespace], object]
    help: str
    flags: tuple[Callable[[argparse.ArgumentParser], object], ...]
    config: bool = True


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *flags: Callable, config: bool = True) -> Callable:
    def deco(fn: Callable[[argparse.Namespace], object]) -> Callable:
        COMMANDS[name] = Command(fn, help, flags, config)
        return fn

    return deco


# Reusable flags.
def fold(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fold", default="all", help="fold number, comma list (0,2) or 'all' (default)")


def force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="redo and overwrite what is already done")


def allow_partial(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="use experiments whose folds are not all finished (their finished folds only; cv.json records it)",
    )


def exp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", help="experiment or ensemble under output_dir (default: the config's own)")


def teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", nargs="+", required=True, help="teacher experiment(s) or ensemble(s)")


def parse_folds(value: str, cfg: Config) -> list[int]:
    if value == "all":
        return list(range(cfg.folds.n_folds))
    try:
        folds = [int(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"--fold {value!r}: expected a fold number, a comma list (0,2) or 'all'") from None
    bad = [k for k in folds if not 0 <= k < cfg.folds.n_folds]
    if bad:
        raise UserError(f"--fold {bad[0]} is outside 0..{cfg.folds.n_folds - 1} (folds.n_folds={cfg.folds.n_folds})")
    return folds


def config_of(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def _demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/demo", help="folder to write (default data/demo)")
    p.add_argument("--task", default="multiclass", choices=TASKS, help=" | ".join(TASKS))
    p.add_argument("--size", type=int, help="image side in pixels (default 32; segmentation: 64)")
    p.add_argument("--rgb", action="store_true", help="write RGB instead of grayscale PNGs")


@command("demo-data", "write the demo competition (scikit-learn digits) in Kaggle layout", _demo_flags, config=False)
def _demo_data(args: argparse.Namespace) -> None:
    from .data.demo import write_demo

    print(f"demo competition written to {write_demo(args.out, task=args.task, size=args.size, rgb=args.rgb)}")


@command("download", "download and unzip the competition's files into data.dir (needs Kaggle credentials)")
def _download(args: argparse.Namespace) -> None:
    from .kaggle.api import download

    cfg = config_of(args)
    if not cfg.competition:
        raise UserError(f"{args.config}: config key 'competition' is empty; set it to the Kaggle competition slug")
    print(f"competition files in {download(cfg.competition, cfg.data.dir)}")


@command("folds", "write the folds once (refuses to change an existing split without --force)", force)
def _folds(args: argparse.Namespace) -> None:
    from .data.folds import write_folds

    path, h, written = write_folds(config_of(args), force=args.force)
    print(f"{path}: {'written' if written else 'unchanged, already'} (hash {h})")


def full(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--full",
        action="store_true",
        help="after CV and predict: fit one model on every training row (epochs and LR from the CV run) -> "
        "outputs/<exp>/full/; submit or blend it as <exp>@full",
    )


@command("train", "train folds (default all), then print and save the CV summary", fold, force, full)
def _train(args: argparse.Namespace) -> None:
    from .core.runtime import is_main
    from .cv import summarize
    from .train import train_folds

    cfg = config_of(args)
    if args.full:
        from .full_fit import train_full

        if args.fold != "all":
            raise UserError(f"--full with --fold {args.fold}: the full fit trains on every fold's rows at once")
        if cfg.seeds:
            raise UserError(f"--full with config key 'seeds' {list(cfg.seeds)}: fit one seed's experiment on every "
                            f"row (exp={seed_members(cfg)[0].exp} seeds=null)")  # fmt: skip
        train_full(cfg, force=args.force)
        return
    check_bag(cfg)
    for member in seed_members(cfg):  # config key seeds: each seed's experiment, then their bag; else cfg itself
        train_folds(member, parse_folds(args.fold, cfg), force=args.force, queue=args.fold == "all")
        if is_main():  # under torchrun, rank 0 summarises
            summarize(member)
    if is_main():
        bag(cfg)


@command("cv", "recompute the CV summary (oof.csv, cv.json, figures) from the finished folds", allow_partial)
def _cv(args: argparse.Namespace) -> None:
    from .cv import summarize

    cfg = config_of(args)
    for member in seed_members(cfg):
        summarize(member, allow_partial=args.allow_partial)
    bag(cfg, args.allow_partial)


@command("lr-find", "LR range test on one fold; prints the suggestion, saves lr_find.png", fold)
def _lr_find(args: argparse.Namespace) -> None:
    from .lr_find import run_lr_find

    cfg = config_of(args)
    for member in seed_members(cfg):  # a seed bag: each seed's experiment finds its own LR (optim.lr: auto reads it)
        run_lr_find(member, parse_folds(args.fold if args.fold != "all" else "0", cfg)[0])


def _aug_preview_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=6, help="training images, one per row (default 6)")
    p.add_argument("--draws", type=int, default=8, help="augmented draws per image (default 8)")


@command("aug-preview", "a grid of training images x augmented draws -> outputs/<exp>/aug_preview.png",
         _aug_preview_flags)  # fmt: skip
def _aug_preview(args: argparse.Namespace) -> None:
    from .aug_preview import run_aug_preview

    if args.images < 1 or args.draws < 1:
        raise UserError(f"--images {args.images} --draws {args.draws}: expected at least 1 of each")
    run_aug_preview(seed_members(config_of(args))[0], args.images, args.draws)


def _predict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-oof-tta",
        action="store_true",
        help="skip re-predicting the OOF rows with the TTA views (tta.views=auto always does: it chooses on them)",
    )
    p.add_argument("--estimate", type=int, metavar="N", help="predict nothing: project the time for N test images")


@command(
    "predict",
    "fold models x TTA views -> outputs/<exp>/test_pred.csv (and OOF with TTA)",
    _predict_flags,
    allow_partial,
)
def _predict(args: argparse.Namespace) -> None:
    from .cv import summarize, warn_if_tta_hurts
    from .predict import estimate, run_predict

    cfg = config_of(args)
    for member in seed_members(cfg):  # a seed bag: each seed's experiment with its own decisions, then the bag
        if args.estimate is not None:
            estimate(member, args.estimate)
            continue
        views = run_predict(member, oof_tta=not args.no_oof_tta, allow_partial=args.allow_partial)
        warn_if_tta_hurts(summarize(member, allow_partial=args.allow_partial), views)
    if args.estimate is None:
        bag(cfg, args.allow_partial)


@command("export", "each fold's best model -> TorchScript, ONNX, int8, pruned; parity, OOF, size, speed")
def _export(args: argparse.Namespace) -> None:
    from .export import run_export

    for member in seed_members(config_of(args)):
        run_export(member)


@command(
    "pseudo",
    "pseudo-label rounds: fold k's teacher labels the test images for fold k's student",
    teacher,
    fold,
    force,
    allow_partial,
)
def _pseudo(args: argparse.Namespace) -> None:
    from .students.pseudo import run_pseudo

    cfg = config_of(args)
    one_seed(cfg, "pseudo")
    if len(args.teacher) != 1:
        raise UserError("pseudo takes one --teacher (an experiment or an ensemble of several)")
    run_pseudo(
        cfg, args.teacher[0], folds=parse_folds(args.fold, cfg), force=args.force, allow_partial=args.allow_partial
    )


@command("distill", "teacher(s) -> student distillation, fold k's teachers only", teacher, fold, force, allow_partial)
def _distill(args: argparse.Namespace) -> None:
    from .students.distill import run_distill

    cfg = config_of(args)
    one_seed(cfg, "distill")
    folds = parse_folds(args.fold, cfg)
    run_distill(cfg, args.teacher, folds=folds, force=args.force, allow_partial=args.allow_partial)


def _ensemble_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exps", nargs="+", required=True, help="experiments (or ensembles) to blend")
    p.add_argument(
        "--method", default="hill_climb", help="mean | weighted | rank | hill_climb | optimize | stacking | vote"
    )
    p.add_argument("--name", default="blend", help="output folder under output_dir (default blend)")
    p.add_argument("--weights", nargs="+", type=float, help="weights for --method weighted")
    p.add_argument("--budget", type=float, metavar="MIN",
                   help="a code competition's time limit in minutes: the members and TTA views that score best on "
                   "OOF within it, from each member's estimate.json (predict --estimate)")  # fmt: skip
    p.add_argument("--n-test", type=int, metavar="N", default=10000, help="test images the budget must cover")


@command("ensemble", "blend experiments on their OOF predictions -> outputs/<name>/", _ensemble_flags, allow_partial)
def _ensemble(args: argparse.Namespace) -> None:
    from .ensemble import blend

    if args.budget is not None:
        from .ensemble import budget_blend

        budget_blend(config_of(args), args.exps, args.method, args.name, args.budget, args.n_test, args.weights,
                     allow_partial=args.allow_partial)  # fmt: skip
        return
    blend(config_of(args), args.exps, args.method, args.name, args.weights, allow_partial=args.allow_partial)


def _submission_flags(p: argparse.ArgumentParser) -> None:
    exp(p)
    p.add_argument("--name", help="file name under submissions/ (default: the experiment's)")


@command("make-submission", "test predictions -> submissions/<name>.csv, validated", _submission_flags)
def _make_submission(args: argparse.Namespace) -> None:
    from .submission import make_submission

    cfg = config_of(args)
    make_submission(cfg, args.exp or cfg.exp, args.name)


def _file_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the submission CSV")


def _submit_flags(p: argparse.ArgumentParser) -> None:
    _file_flags(p)
    p.add_argument("-m", "--message", help="submission message (default: experiment and its CV)")
    p.add_argument("--dry-run", action="store_true", help="validate and show what would be sent; send nothing")


@command("submit", "validate a submission and send it with `kaggle competitions submit`", _submit_flags)
def _submit(args: argparse.Namespace) -> None:
    from .kaggle.api import submit

    cfg = config_of(args)
    submit(cfg, args.file, args.message, args.dry_run, competition=cfg.competition)


@command("lb", "CV against the public leaderboard: submissions/log.csv joined to Kaggle's submission history")
def _lb(args: argparse.Namespace) -> None:
    from .kaggle.leaderboard import run_lb

    run_lb(config_of(args))


def _score_flags(p: argparse.ArgumentParser) -> None:
    _file_flags(p)
    p.add_argument("--solution", help="solution CSV (default: data.dir/solution.csv, which the demo ships)")


@command("score", "score a submission against a solution file with the config's metric", _score_flags)
def _score(args: argparse.Namespace) -> None:
    from .submission import score_line

    print(score_line(config_of(args), args.file, args.solution))


def _upload_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exps", nargs="+", required=True, help="experiments whose checkpoints to package")
    p.add_argument("--dataset", required=True, help="Kaggle dataset id, <user>/<slug>")
    p.add_argument("--title", help="dataset title (default: the slug)")
    p.add_argument("--dest", default="build/kaggle-dataset", help="folder to assemble it in")
    p.add_argument("-m", "--message", default="update", help="version message")
    p.add_argument("--dry-run", action="store_true", help="assemble the folder only; upload nothing")


@command(
    "upload",
    "package src/, checkpoints and configs as a Kaggle dataset; create or version it",
    _upload_flags,
    allow_partial,
)
def _upload(args: argparse.Namespace) -> None:
    from .kaggle.api import dataset_create_or_version
    from .kaggle.offline import package_for_dataset

    cfg = config_of(args)
    title = args.title or args.dataset.split("/")[-1]
    folder = package_for_dataset(cfg, args.exps, args.dest, args.dataset, title, args.allow_partial)
    print(f"dataset folder: {folder}")
    if not args.dry_run:
        print(dataset_create_or_version(folder, args.message))


@command("serve", "an HTTP server (and web page) over EXP's fold models, predicting as predict does (serve.* keys)")
def _serve(args: argparse.Namespace) -> None:
    from .serve import run_serve

    cfg = config_of(args)
    one_seed(cfg, "serve")
    run_serve(cfg)


def _notebook_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="the upload dataset the kernel reads, <user>/<slug>")
    p.add_argument("--kernel", help="kernel id, <user>/<slug> (default: <dataset user>/<competition>-inference)")
    p.add_argument("--title", help="kernel title (default: from the kernel slug)")
    p.add_argument("--folder", default="notebooks", help="kernel folder: the script + kernel-metadata.json")
    p.add_argument("--dry-run", action="store_true", help="write kernel-metadata.json only; push nothing")
    p.add_argument("--submit", metavar="EXP", help="wait for the kernel's run, then submit its submission.csv to the "
                   "competition with EXP's CV in the message, and log it (submissions/log.csv)")  # fmt: skip
    p.add_argument("--poll", type=float, default=30.0, help="seconds between status checks with --submit (30)")


@command("push-notebook", "fill notebooks/kernel-metadata.json and push the inference notebook", _notebook_flags)
def _push_notebook(args: argparse.Namespace) -> None:
    from .kaggle.offline import push_notebook

    if args.submit is not None and args.dry_run:
        raise UserError("--submit with --dry-run: a dry run pushes nothing, so there is no kernel run to submit")
    if args.poll <= 0:
        raise UserError(f"--poll {args.poll}: expected seconds between status checks, > 0")
    push_notebook(config_of(args), args.dataset, args.kernel, args.title, args.folder, args.dry_run,
                  submit=args.submit, poll_s=args.poll)  # fmt: skip


def _final_two_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exps", nargs="+", help="runs to choose from (default: every run under output_dir with test_pred)")


@command("final-two", "propose the two final submissions: the best CV, and the most different run within its noise",
         _final_two_flags)  # fmt: skip
def _final_two(args: argparse.Namespace) -> None:
    from .kaggle.lb_sense import final_two

    final_two(config_of(args), args.exps)


def _errors_flags(p: argparse.ArgumentParser) -> None:
    exp(p)
    p.add_argument("--top", type=int, default=32, help="OOF rows of largest loss in the grid and table (default 32)")


@command("errors", "error analysis of OOF: the rows of largest loss as an image grid, reliability diagrams, ECE",
         _errors_flags)  # fmt: skip
def _errors(args: argparse.Namespace) -> None:
    from .errors import run_errors

    if args.top < 1:
        raise UserError(f"--top {args.top}: expected at least 1 row")
    run_errors(config_of(args), args.exp, args.top)


@command("check-data", "before the first model: near duplicates (train/train, train/test leaks) -> groups for folds, "
         "adversarial validation, drift -> <output_dir>/data_check/")  # fmt: skip
def _check_data(args: argparse.Namespace) -> None:
    from .datacheck import run_check_data

    run_check_data(config_of(args))


def check_bag(cfg: Config) -> None:
    """A seed bag (config key seeds) can be blended into outputs/<exp>/: checked before its seeds train."""
    if cfg.seeds:
        from .ensemble import check_bag_folder

        check_bag_folder(cfg)


def bag(cfg: Config, allow_partial: bool = False) -> None:
    """A seed bag (config key seeds): its members' mean -> outputs/<exp>/, once every seed has every fold (or with
    `allow_partial`, the folds every seed finished); the per-seed CVs, their spread and the bag's CV printed."""
    if not cfg.seeds:
        return
    from .ensemble import bag_seeds

    members = seed_members(cfg)
    missing = {m.exp: m.run.missing_folds(m.folds.n_folds) for m in members}
    missing = {e: folds for e, folds in missing.items() if folds}
    if missing and not allow_partial:
        print(f"{cfg.exp}: seed bag not blended yet, fold(s) unfinished: {missing}; train them (or `cv "
              "--allow-partial` blends the folds every seed finished)")  # fmt: skip
        return
    bag_seeds(cfg, [m.exp for m in members], list(cfg.seeds), allow_partial=allow_partial)


def one_seed(cfg: Config, use: str) -> None:
    """`use` trains or serves one set of fold models: a seed bag (config key seeds) is refused, naming the way."""
    if cfg.seeds:
        member = seed_members(cfg)[0]
        raise UserError(f"config key 'seeds' is {list(cfg.seeds)}: {use} takes one seed's fold models, not a bag; "
                        f"run it with seeds=null (one training under seed), or on a member: seeds=null "
                        f"exp={member.exp} seed={member.seed}")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=__package__, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if cmd.config:
            p.add_argument("-c", "--config", required=True, help="experiment YAML, e.g. configs/exp001.yaml")
        for add in cmd.flags:
            add(p)
        if cmd.config:
            p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    return parser


def split_overrides(args: argparse.Namespace) -> argparse.Namespace:
    """A list flag (--teacher A B, --exps A B) takes every word after it, `key=value` overrides too: those belong
    to the overrides (experiment names never hold '=')."""
    for name, value in vars(args).items():
        if name != "overrides" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            moved = [v for v in value if "=" in v]
            if moved:
                setattr(args, name, [v for v in value if "=" not in v])
                args.overrides = [*moved, *getattr(args, "overrides", [])]
    return args


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse gives the positional words (a file, then the overrides) one go: `key=value` words after a flag
    (`submit FILE --dry-run train.epochs=3`, as `make submit DRY=1 ARGS=...` writes it) come back unknown, and are
    overrides too."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    stray = [a for a in unknown if "=" not in a or a.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    return split_overrides(args)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        COMMANDS[args.command].run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted: {e}; rerun the same command to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # files are replaced only once complete: nothing is left half-written
        print(f"interrupted: {args.command} stopped; its finished files are complete, rerun it to redo the rest",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0
