"""The `persam` command: thin wrappers that parse arguments and call the library.

Each subcommand is one small function; errors the user can fix (a bad manifest, a missing
file) are printed as one clear message with exit code 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from persam_lib.cohort.manifest import ManifestError
from persam_lib.features.config import READER_BACKENDS, ExtractConfig
from persam_lib.io.locks import FolderBusyError
from persam_lib.slides.base import SlideError
from persam_lib.slides.patching import PatchConfig
from persam_lib.train.loop import TrainConfig


def _demo_cohort(args: argparse.Namespace) -> int:
    if args.kind == "radiograph":
        if args.subtypes != 2:
            raise ValueError("--subtypes applies to slide cohorts; the radiograph cohort has two findings (benign, malignant)")
        from persam_lib.cohort.demo_images import RadiographCohortConfig, make_radiograph_cohort

        manifest = make_radiograph_cohort(args.out, RadiographCohortConfig(patients=args.patients or 160, seed=args.seed))
    else:
        from persam_lib.cohort.demo import DemoConfig, make_demo_cohort

        manifest = make_demo_cohort(args.out, DemoConfig(patients=args.patients or 128, seed=args.seed, subtypes=args.subtypes))
    print(f"demo cohort ({args.kind}): written; manifest: {manifest}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    """The manifest and its tables, the cohort as a whole (warnings on stderr), then — unless
    ``--quick`` — every slide opened or every image decoded; every failure in one message."""
    from persam_lib.cohort.manifest import load_manifest, unreadable_report
    from persam_lib.cohort.sanity import cohort_issues, errors_message

    cohort = load_manifest(args.manifest)
    errors, warnings = cohort_issues(cohort, None)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    failures = [errors_message(errors)] if errors else []
    if not args.quick and cohort.modality == "images":
        from persam_lib.images import ImageReadError
        from persam_lib.train.data import load_images

        try:
            load_images(cohort)
        except ImageReadError as err:
            failures.append(str(err))
    elif not args.quick:
        from persam_lib.slides.check import check_slides

        unreadable = check_slides(cohort, backend=args.reader_backend)
        if unreadable:
            failures.append(unreadable_report(cohort, {p.slide_id: p.reason for p in unreadable}))
    if failures:
        raise ValueError("\n".join(failures))
    opened = "files not opened (--quick)" if args.quick else f"every {cohort.sample_name} {'opened' if cohort.modality == 'slides' else 'decoded'}"
    labelling = "" if cohort.labelling == "labelled" else f" ({cohort.labelling}: {len(cohort.unlabelled)} without a label; for predict and explain, not train)"
    print(f"{args.manifest}: valid — cohort '{cohort.name}', {len(cohort.slides)} {cohort.sample_name}(s), {len(cohort.clinical)} patient(s){labelling}, fields {cohort.schema.names}; {opened}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from persam_lib.cohort.manifest import load_manifest
    from persam_lib.features.extract import extract
    from persam_lib.features.workers import ReaderKilledError

    cohort = load_manifest(args.manifest)
    patch = PatchConfig(patch_size=args.patch_size, stride=args.stride, mpp=None if args.mpp <= 0 else args.mpp, min_tissue_fraction=args.min_tissue)
    config = ExtractConfig(encoder=args.encoder, encoder_weights=str(args.weights) if args.weights else None, patch=patch, batch_size=args.batch_size, num_workers=args.readers, reader_backend=args.reader_backend)
    try:
        if args.scheduler or args.workers:
            from persam_lib.features.distributed import extract_distributed

            summary = extract_distributed(cohort, args.out, config, address=args.scheduler, n_workers=args.workers or 2, overwrite=args.overwrite)
        else:
            summary = extract(cohort, args.out, config, overwrite=args.overwrite)
    except ReaderKilledError as err:  # a resource fault, not bad input: exit 1, one line
        print(f"persam extract: error: {err}", file=sys.stderr)
        return 1
    print(summary.line())
    return 1 if summary.failed else 0


def _import_features(args: argparse.Namespace) -> int:
    from persam_lib.cohort.manifest import load_manifest
    from persam_lib.features.importing import import_features

    cohort = load_manifest(args.manifest)
    summary = import_features(cohort, args.source, args.out, args.format)
    print(summary.line())
    for slide_id, reason in summary.failed.items():
        print(f"  {slide_id}: {reason}", file=sys.stderr)
    return 1 if summary.failed or summary.missing else 0


def _train_config(args: argparse.Namespace, modality: str, **fixed) -> tuple[TrainConfig, set[str]]:
    """The modality's defaults, the shortcut flags, then ``--config FILE.yaml``, then ``--set NAME=VALUE``;
    and the names the user gave (a model's training recipe fills the others, `persam_lib.train.recipes`)."""
    from persam_lib.options import configure, load_overrides, parse_assignments

    base = TrainConfig.for_modality(modality, n_folds=args.folds, epochs=args.epochs, seed=args.seed, device=args.device, **fixed)
    given = {"n_folds", "epochs", "seed", "device", *fixed} | ({"lr"} if modality == "images" else set())  # the flags, and the images' own lr
    given |= set(load_overrides(args.config)) if args.config else set()
    given |= set(parse_assignments(args.set)) if args.set else set()
    return configure(base, args.config, args.set), given


def _train(args: argparse.Namespace) -> int:
    from persam_lib.cohort.manifest import load_manifest
    from persam_lib.train.distributed import distributed_session
    from persam_lib.train.recipes import with_recipe
    from persam_lib.train.run import train_cross_validated

    cohort = load_manifest(args.manifest)
    config, given = _train_config(args, cohort.modality, model=args.model)
    config = with_recipe(config, given)
    with distributed_session() as distributed:
        run = train_cross_validated(cohort, args.features, args.out, config, distributed=distributed)
        if args.final and distributed.is_main:
            from persam_lib.train.final import train_final

            final = train_final(run, cohort, args.features)
            print(f"train {config.model}: final model on every patient -> {final}")
        if distributed.is_main:
            overall = run.metrics["overall"]
            print(
                f"train {config.model}: balanced accuracy {overall['balanced_accuracy']:.3f} "
                f"[{overall['balanced_accuracy_low']:.3f}, {overall['balanced_accuracy_high']:.3f}], AUROC {overall['auroc']:.3f}; run in {run.path}"
            )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from persam_lib.cohort.manifest import load_manifest
    from persam_lib.train.distributed import distributed_session
    from persam_lib.train.run import compare_models

    cohort = load_manifest(args.manifest)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    config, given = _train_config(args, cohort.modality)
    with distributed_session() as distributed:
        table = compare_models(cohort, args.features, args.out, models, config, workers=args.workers, distributed=distributed, given=given)
        if distributed.is_main:
            columns = [c for c in ("model", "balanced_accuracy", "balanced_accuracy_low", "balanced_accuracy_high", "auroc", "accuracy_regions_disagree") if c in table]
            print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(f"compare: {len(models)} model(s) on identical folds -> {Path(args.out) / 'comparison.csv'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from persam_lib.cohort.manifest import load_manifest
    from persam_lib.io.atomic import write_json_atomic, write_text_atomic
    from persam_lib.predict.calibration import stored_temperature
    from persam_lib.predict.ensemble import by_patient, predict_cohort, score
    from persam_lib.train.run import Run

    if args.out.suffix != ".csv":
        raise ValueError(f"{args.out}: the predictions table must end in .csv")
    run, cohort = Run(args.run), load_manifest(args.manifest)
    features = args.features if args.features is not None else (run.inputs.get("features_dir") if cohort.modality == "slides" else None)
    temperature = 1.0 if args.no_calibration else (stored_temperature(run) or 1.0)
    predictions = predict_cohort(run, cohort, features, fold=args.fold, final=args.model == "final", device=args.device, temperature=temperature)
    for note in predictions.notes:
        print(f"predict: note: {note}", file=sys.stderr)
    table = by_patient(predictions)
    write_text_atomic(args.out, table.to_csv(index=False))
    how = f"fold {args.fold}" if args.fold is not None else "the final model (every patient)" if args.model == "final" else f"the mean of {len(run.finished_folds)} fold models"
    print(f"predict: {len(table)} patient(s) of {cohort.name} scored by {how}" + (f", temperature {temperature:.3f} (calibration.json)" if temperature != 1.0 else "") + f" -> {args.out}")
    metrics = score(predictions, cohort)
    if metrics is not None:
        print(f"predict: {metrics['n']} labelled patient(s): balanced accuracy {metrics['balanced_accuracy']:.3f} [{metrics['balanced_accuracy_low']:.3f}, {metrics['balanced_accuracy_high']:.3f}], AUROC {metrics['auroc']:.3f}")
        if args.metrics:
            write_json_atomic(args.metrics, metrics)
    elif args.metrics:
        print("predict: the cohort is unlabelled, so there are no metrics to write", file=sys.stderr)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from persam_lib.predict.calibration import calibrate_run
    from persam_lib.train.run import Run

    result = calibrate_run(Run(args.run), store=not args.dry_run)
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    print(f"calibrate: {result.patients} out-of-fold patients; ECE {fmt(result.ece)} -> {fmt(result.ece_scaled)}, Brier {fmt(result.brier)} -> {fmt(result.brier_scaled)} at temperature {result.temperature:.3f}"
          + ("" if args.dry_run else f"; stored in {Path(args.run) / 'calibration.json'} (persam predict applies it)"))
    return 0


def _export(args: argparse.Namespace) -> int:
    from persam_lib.cohort.manifest import load_manifest
    from persam_lib.explain.export import export_slides
    from persam_lib.train.run import Run

    run, cohort = Run(args.run), load_manifest(args.manifest)
    chosen = [s.strip() for s in args.slides.split(",") if s.strip()] if args.slides else None
    features = args.features if args.features is not None else run.inputs.get("features_dir")
    written = export_slides(run, cohort, features, chosen, args.format, args.out, fold=args.fold, pseudonyms=args.pseudonyms)
    slides = len(chosen) if chosen else len(cohort.slides)
    print(f"export: {len(written)} {args.format} file(s) for {slides} slide(s) -> {args.out}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from persam_lib.cohort.manifest import load_manifest
    from persam_lib.cohort.truth import load_truth
    from persam_lib.explain.attention import ExplainConfig, check_table_path, explain_run, write_table
    from persam_lib.explain.records import alterations_from_yaml, parse_alteration
    from persam_lib.explain.report import check_metrics_path, example_slides, explanation_report, null_fields_of, write_figures, write_metrics
    from persam_lib.train.run import Run

    cohort = load_manifest(args.manifest)
    run = Run(args.run_dir)
    alterations = [parse_alteration(text, cohort.schema) for text in args.alter]
    if args.alterations:
        alterations += alterations_from_yaml(args.alterations, cohort.schema)
    quantiles = tuple(float(q) for q in args.quantiles.split(",") if q.strip())
    truth = load_truth(cohort)
    nulls = null_fields_of(cohort, truth, args.null_field)  # checked before the long part
    check_table_path(args.out)  # bad output names fail before the long part, not after it
    if args.metrics is not None:
        check_metrics_path(args.metrics)
    features = args.features or (None if cohort.modality == "images" else _features_of(run))
    explanation = explain_run(run, cohort, features, alterations or None, ExplainConfig(quantiles=quantiles, per_head=args.per_head, per_class=args.per_class, fold=args.fold))
    write_table(explanation.attention, args.out)
    print(f"explain: {explanation.attention['slide_id'].nunique()} {cohort.sample_name}(s), {explanation.attention['record'].nunique()} record(s) -> {args.out}")
    if args.metrics or args.figures:
        report = explanation_report(explanation, cohort, truth, nulls)
        if args.metrics:
            write_metrics([report], args.metrics)
            print(f"explain: shift, null tests{' and ground truth' if truth else ''} -> {args.metrics}")
        if args.figures:
            slides = [s.strip() for s in args.slides.split(",")] if args.slides else example_slides(cohort, args.figure_slides, truth)
            written = write_figures(explanation, cohort, features, args.figures, slides, truth)
            print(f"explain: {len(written)} figure(s) -> {args.figures}")
    return 0


def _book(args: argparse.Namespace) -> int:
    from persam_lib.book.build import make_book

    from persam_lib.options import parse_assignments, parse_yaml_value

    root = Path(args.project).resolve()
    overrides = {name: parse_yaml_value(name, value) for name, value in parse_assignments(args.set).items()}
    if args.patients:
        overrides["patients"] = args.patients
    if args.features is not None and args.manifest is None:
        print("persam book: error: --features needs --manifest (the cohort the features belong to)", file=sys.stderr)
        return 2
    for name, value in (("manifest", args.manifest), ("features_dir", args.features)):
        if value is not None:
            if not value.exists():
                print(f"persam book: error: {value} does not exist; give the {'manifest.yaml of your cohort' if name == 'manifest' else 'folder of feature files'}", file=sys.stderr)
                return 2
            overrides[name] = str(value.resolve())
    if args.jobs < 1:
        print(f"persam book: error: --jobs must be 1 or more, got {args.jobs}", file=sys.stderr)
        return 2
    report = make_book(root, args.work, overrides or None, strict=args.strict, browser_check=not args.no_browser_check, jobs=args.jobs)
    print(report.line())
    if report.build_returncode == 0:
        print(f"Open {root / '_build' / 'html' / 'index.html'}")
    return 0 if report.ok else 1


def _sweep(args: argparse.Namespace) -> int:
    from persam_lib.book.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep, args.project)  # every problem is reported before anything runs
    if args.out:
        sweep.out = args.out.resolve()
    report = run_sweep(sweep, args.work, workers=args.workers, scheduler=args.scheduler, cwd=args.project)
    print(report.line())
    print(f"sweep: results table {report.table}")
    return 1 if report.failed else 0


def _reproduce(args: argparse.Namespace) -> int:
    from persam_lib.book.reproduce import reproduce

    result = reproduce(args.notebook, work_dir=args.work, out_dir=args.out, source=args.source, tolerance=args.tolerance, cwd=args.project)
    table = result.comparison.copy()
    if len(table):
        table["ok"] = table["ok"].map({True: "ok", False: "MISMATCH"})
        print(table.to_string(index=False))
    print(result.line())
    print(f"reproduce: re-executed notebook {result.executed}")
    return 0 if result.ok else 1


def _check_book(args: argparse.Namespace) -> int:
    from persam_lib.book.browser import check_book

    try:
        report = check_book(args.html, screenshot=args.screenshot)
    except RuntimeError as err:  # no Chromium: say how to get it
        raise ValueError(str(err)) from None
    for page in report.pages:
        for problem in page.problems:
            print(f"  {problem}")
    print(report.line())
    return 0 if report.ok else 1


def _features_of(run) -> str:
    features = run.inputs.get("features_dir")
    if not features:
        raise FileNotFoundError(f"{run.path}: the run does not record its features directory; pass --features DIR")
    return features


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", type=int, default=TrainConfig.n_folds, help="cross-validation folds (patient-level, label-stratified)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="maximum epochs per fold (early stopping on the validation split)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of folds, initialisation and sampling")
    p.add_argument("--device", default=TrainConfig.device, help="auto (CUDA when present), cpu or cuda")
    from persam_lib.options import describe

    p.add_argument("--config", type=Path, help="YAML file of options by the names --set takes (e.g. 'lr: 0.001' and 'd_model: 32')")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help=f"set a training option or model setting, e.g. --set label_smoothing=0.2 --set dropout=0.25 (repeatable; after --config; image cohorts start at lr={TrainConfig.for_modality('images').lr}). "
        f"A model setting the chosen model does not read is an error. Names and defaults: {describe(TrainConfig())}".replace("%", "%%"),
    )


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none worth showing (None, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS and action.default != []
        if shown and "%(default)" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("persam-lib")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from persam_lib.models import available_models

    parser = argparse.ArgumentParser(prog="persam", description="Attention models that read a whole-slide image or a 2-D medical image together with the clinical record.")
    parser.add_argument("--version", action="version", version=f"persam {_version()}", help="print the version of persam-lib and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-cohort", help="generate a demo cohort (slides or radiographs, clinical table, ground truth)")
    p.add_argument("out", type=Path, help="folder to write the cohort into (slides or images, tables, manifest.yaml, truth/)")
    p.add_argument("--kind", choices=["slide", "radiograph"], default="slide", help="whole-slide images (default) or 2-D chest radiographs")
    p.add_argument("--patients", type=int, default=None, help="default: 128 slides, 160 radiographs")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated cohort")
    p.add_argument("--subtypes", type=int, choices=[2, 3], default=2, help="slide cohorts: classes A, B or A, B, C (each a nuclear phenotype; the record still decides which region counts)")
    p.set_defaults(func=_demo_cohort)

    p = sub.add_parser("validate", help="check a manifest, its tables and the cohort, and open every slide or image; every error names file, line and field")
    p.add_argument("manifest", type=Path, help="the cohort's manifest.yaml")
    p.add_argument("--quick", action="store_true", help="check the manifest, tables and cohort only: do not open slides or decode images")
    p.add_argument("--reader-backend", choices=READER_BACKENDS, default=ExtractConfig.reader_backend, help="open slides as `persam extract --reader-backend` will")
    p.set_defaults(func=_validate)

    p = sub.add_parser("extract", help="tissue, patches and features: one HDF5 per slide (resumable; settings recorded and checked)")
    p.add_argument("manifest", type=Path, help="the cohort's manifest.yaml")
    p.add_argument("--out", type=Path, required=True, help="features directory (one <slide_id>.h5 and masks/<slide_id>.png per slide, failures.csv); locked while the run works in it")
    p.add_argument("--encoder", default=ExtractConfig.encoder, help="stats (no weights); resnet50_trunc, vit_s16; foundation models uni, uni2_h, virchow2, h_optimus_0, prov_gigapath, conch_v1_5 (need --weights); hf:FOLDER (a transformers ViT/DINOv2 saved with save_pretrained; hf:FOLDER@cls+mean for class token + patch mean); timm:<name> when timm imports. Nothing is downloaded")
    p.add_argument("--weights", type=Path, default=ExtractConfig.encoder_weights, help="local weight file (.pth/.pt/.bin state dict or .safetensors, torchvision / timm layout) for resnet50_trunc, vit_s16, the foundation-model presets and timm:*; not for hf:FOLDER, which holds its own; its sha256 is recorded in every feature file")
    p.add_argument("--readers", type=int, default=ExtractConfig.num_workers, help="patch-reading processes beside the encoder (-1: one per CPU but one; 0: read in the main process, least memory)")
    p.add_argument("--reader-backend", choices=READER_BACKENDS, default=ExtractConfig.reader_backend, help="auto: fast tiled-TIFF path where possible, else OpenSlide")
    p.add_argument("--scheduler", help="address of a running Dask scheduler: slides become tasks on its workers")
    p.add_argument("--workers", type=int, default=0, help="run slides as tasks on a local Dask cluster of N worker processes (0: no Dask)")
    p.add_argument("--patch-size", type=int, default=PatchConfig.patch_size, help="patch side in pixels at --mpp")
    p.add_argument("--mpp", type=float, default=PatchConfig.mpp or 0.0, help="target microns per pixel (0.5 ~ 20x, 0.25 ~ 40x); 0 = each slide's native level 0")
    p.add_argument("--stride", type=int, default=PatchConfig.stride, help="grid step in pixels at --mpp (default: patch size, no overlap)")
    p.add_argument("--min-tissue", type=float, default=PatchConfig.min_tissue_fraction, help="minimum tissue fraction of a kept patch")
    p.add_argument("--batch-size", type=int, default=ExtractConfig.batch_size, help="patches encoded at once (smaller needs less memory)")
    p.add_argument("--overwrite", action="store_true", help="redo every slide with this run's settings, replacing the features in --out; needed to change the encoder, weights, --patch-size, --mpp, --stride or --min-tissue of a folder that holds features (default: off: finished slides are kept, other settings refused)")
    p.set_defaults(func=_extract)

    p = sub.add_parser("import-features", help="bring in features written by CLAM or TRIDENT, checked against the manifest")
    p.add_argument("source", type=Path, help="the other tool's output folder")
    p.add_argument("--format", choices=["clam", "trident"], required=True, help="the other tool's layout: clam (h5_files/<slide>.h5) or trident (features_<encoder>/<slide>.h5)")
    p.add_argument("--manifest", type=Path, required=True, help="the cohort's manifest.yaml; files are matched to its slides by slide_id or slide file name")
    p.add_argument("--out", type=Path, required=True, help="features directory to fill (slides already there are kept; locked while the import works in it)")
    p.set_defaults(func=_import_features)

    p = sub.add_parser("train", help="patient-level cross-validated training into a run directory (resumable; torchrun for several GPUs)")
    p.add_argument("manifest", type=Path, help="the cohort's manifest.yaml")
    p.add_argument("--features", type=Path, help="features directory (slide cohorts; image cohorts are read from their files)")
    p.add_argument("--model", default="persam", help=f"a registered model: {', '.join(available_models('features'))} (slides); {', '.join(available_models('image'))} (images)")
    p.add_argument("--final", action="store_true", help="after cross-validation, fit one more model on every patient for the folds' median best epoch (final/ in the run; persam predict --model final)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    _add_training_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("compare", help="train several models on identical folds and write one comparison table")
    p.add_argument("manifest", type=Path, help="the cohort's manifest.yaml")
    p.add_argument("--features", type=Path, help="features directory (slide cohorts; image cohorts are read from their files)")
    p.add_argument("--models", required=True, help="comma-separated, e.g. persam,mma_mgmu,chexradinet,abmil,transmil,concat,clinical_only (slides) or persam,mma_mgmu,chexradinet,cnn,cnn_concat,clinical_only (images)")
    p.add_argument("--out", type=Path, required=True, help="one run directory per model goes here, plus comparison.csv")
    _add_training_options(p)
    p.add_argument("--workers", type=int, default=1, help="train models in N parallel processes (CPU)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("predict", help="score a cohort of new patients (labels optional) with a run's fold models as an ensemble")
    p.add_argument("run", type=Path, help="a finished run directory (persam train)")
    p.add_argument("--manifest", type=Path, required=True, help="the new cohort's manifest.yaml (the label column may be missing or empty)")
    p.add_argument("--features", type=Path, default=None, help="the new cohort's features (default: the run's features folder); made with the run's extraction settings")
    p.add_argument("--out", type=Path, required=True, help="predictions table (.csv): one row per patient, each class's probability, the predicted class, the spread across folds")
    p.add_argument("--fold", type=int, default=None, help="score with this fold's model alone (default: the mean of all fold models)")
    p.add_argument("--model", choices=("folds", "final"), default="folds", help="folds: the fold models (as an ensemble, or --fold); final: the model persam train --final fitted on every patient")
    p.add_argument("--metrics", type=Path, default=None, help="with labels: write the metrics (balanced accuracy, AUROC, F1, confusion; 95%% CIs) to this .json")
    p.add_argument("--no-calibration", action="store_true", help="ignore the temperature persam calibrate stored in the run")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=_predict)

    p = sub.add_parser("calibrate", help="reliability, ECE and Brier score of a run's out-of-fold predictions; fit and store temperature scaling")
    p.add_argument("run", type=Path, help="a finished run directory")
    p.add_argument("--dry-run", action="store_true", help="measure only; store no temperature")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("export", help="attention for review in QuPath/OpenSlide: GeoJSON tiles with each record's attention, or pyramidal TIFF overlays")
    p.add_argument("run", type=Path, help="a finished run directory")
    p.add_argument("--manifest", type=Path, required=True, help="the cohort whose slides are exported (a new cohort works too: its patients are explained by the fold ensemble)")
    p.add_argument("--features", type=Path, default=None, help="its features (default: the run's features folder)")
    p.add_argument("--slides", default="", help="comma-separated slide ids (default: every slide)")
    p.add_argument("--format", choices=("geojson", "tiff"), default="geojson", help="geojson: one FeatureCollection per slide (tiles in level-0 pixels, one measurement per record); tiff: one pyramidal overlay per slide and record, at the slide's level-0 size and mpp")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--fold", type=int, default=None, help="explain with this fold's model (default: as persam explain)")
    p.add_argument("--pseudonyms", action="store_true", help="name the files by pseudonym (S0001...) instead of slide id, for sharing")
    p.set_defaults(func=_export)

    p = sub.add_parser("explain", help="patch attention under the original and altered records, shift and ground-truth metrics, figures")
    p.add_argument("run_dir", type=Path, help="a run directory written by `persam train`")
    p.add_argument("--manifest", type=Path, required=True, help="the cohort whose slides (or images) and records are explained")
    p.add_argument("--features", type=Path, help="features directory (default: the one the run was trained on)")
    p.add_argument("--alter", action="append", default=[], metavar="FIELD=VALUE", help="an alteration (repeatable; join edits with ';'); default: every categorical field to each other value, every numeric field to the --quantiles")
    p.add_argument("--alterations", type=Path, help="YAML file listing alterations (several edits each), added to --alter")
    p.add_argument("--quantiles", default="0.1,0.5,0.9", help="cohort quantiles numeric fields are set to by default (comma-separated)")
    p.add_argument("--per-head", action="store_true", help="add one attention column per head")
    p.add_argument("--per-class", action="store_true", help="add one attention_class_<class> column per class (models with per-class maps: persam_paper)")
    p.add_argument("--fold", type=int, default=None, help="explain every sample with this fold's model (default: a patient of the run by the model that did not train on it, a new patient by the mean of every fold model)")
    p.add_argument("--null-field", action="append", default=[], metavar="FIELD", help="a field the model should ignore, for the null test (besides negative controls and the ground truth's noise fields)")
    p.add_argument("--out", type=Path, required=True, help="attention table, .csv or .parquet")
    p.add_argument("--metrics", type=Path, help="write shift, null-test and ground-truth tables to this .json file")
    p.add_argument("--figures", type=Path, help="write heatmaps and small multiples (PNG) into this folder")
    p.add_argument("--slides", help="comma-separated slide (or image) ids for --figures (default: --figure-slides examples)")
    p.add_argument("--figure-slides", type=int, default=4, help="how many example slides --figures draws")
    p.set_defaults(func=_explain)

    p = sub.add_parser("book", help="execute every notebook with papermill and build the Jupyter Book")
    p.add_argument("--work", type=Path, default=Path("_work/demo"), help="where the demo cohort, features and runs go")
    p.add_argument("--project", type=Path, default=Path("."), help="project root (holds _config.yml)")
    p.add_argument("--patients", type=int, default=None, help="override the demo cohort size")
    p.add_argument("--manifest", type=Path, default=None, help="build the book on your cohort (its manifest.yaml) instead of the demo cohort; check it first with persam validate")
    p.add_argument("--features", type=Path, default=None, help="with --manifest: feature files you brought (persam import-features or an earlier persam extract); nothing is extracted or written there")
    p.add_argument("--strict", action="store_true", help="jupyter-book -W -n: warnings are errors")
    p.add_argument("--no-browser-check", action="store_true", help="skip opening the built book in headless Chromium")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a parameter for every notebook that declares it, e.g. --set epochs=3 (value read as YAML)")
    p.add_argument("--jobs", type=int, default=2, help="chapters executed at once where book/notebooks.yaml allows it (its 'after:'); 1: one after another")
    p.set_defaults(func=_book)

    p = sub.add_parser("sweep", help="execute notebooks over a grid of parameters (papermill), resumable, one folder per point")
    p.add_argument("sweep", type=Path, help="sweep YAML: notebooks with a grid or list of points (see persam_lib.book.sweep)")
    p.add_argument("--work", type=Path, default=Path("_work/demo"), help="the book's work dir (cohort, features, runs) the points read")
    p.add_argument("--out", type=Path, help="where points go (default: the sweep file's 'out', else runs/ beside it)")
    p.add_argument("--workers", type=int, default=1, help="run N points at once in local processes (each gets its own GPU when there are GPUs)")
    p.add_argument("--scheduler", help="address of a Dask scheduler: points become tasks on its workers")
    p.add_argument("--project", type=Path, default=Path("."), help="project root (holds book/notebooks.yaml)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("reproduce", help="re-execute a published notebook with its recorded parameters and compare its results")
    p.add_argument("notebook", type=Path, help="an executed notebook, e.g. book/executed/training.ipynb")
    p.add_argument("--work", type=Path, help="work dir with the earlier chapters' products (default: the recorded one)")
    p.add_argument("--out", type=Path, help="where the re-execution writes (default: WORK/reproduce/<notebook>, emptied first)")
    p.add_argument("--source", type=Path, help="the source notebook (default: the recorded one)")
    p.add_argument("--tolerance", type=float, help="one absolute tolerance for every result (default: each result's published tolerance)")
    p.add_argument("--project", type=Path, default=Path("."), help="project root (the notebooks run there)")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("check-book", help="open the built book in headless Chromium: pages, figures, links; save a screenshot")
    p.add_argument("html", type=Path, nargs="?", default=Path("_build/html"), help="the built book's HTML folder")
    p.add_argument("--screenshot", type=Path, default=Path("_build/screenshots/index.png"), help="where the screenshot of the first page goes")
    p.set_defaults(func=_check_book)
    for command in sub.choices.values():
        command.formatter_class = _HelpWithDefaults
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `persam` command."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ManifestError, FileNotFoundError, ValueError, SlideError, FolderBusyError) as err:
        print(f"persam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only folder, permissions: one line naming the path, no traceback
        print(f"persam {args.command}: error: {_os_error_line(err)}", file=sys.stderr)
        return 1


def _os_error_line(err: OSError) -> str:
    """One line for an operating-system error: the path, the cause and what to do."""
    import errno

    where = f"{err.filename}: " if err.filename else ""
    cause = err.strerror or str(err)
    advice = {
        errno.ENOSPC: "free disk space (or choose another output folder) and run the same command again: finished work is kept",
        errno.EROFS: "the folder is on a read-only file system; choose another output folder",
        errno.EACCES: "check the folder's permissions, or choose another output folder",
        errno.EPERM: "check the folder's permissions, or choose another output folder",
        errno.ENOTDIR: "choose another output folder, or move that file away",
        errno.EEXIST: "choose another output folder, or move that file away",
    }.get(err.errno, "fix the cause and run the same command again: finished work is kept")
    return f"{where}{cause}; {advice}."


if __name__ == "__main__":
    sys.exit(main())
