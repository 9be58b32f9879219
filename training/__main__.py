"""`python -m training train|export|evaluate|report`: one parser, four commands."""

import argparse
import json
import sys
from pathlib import Path

from service.runtime.modeldir import ModelDirError
from training.errors import TrainingError
from training.options import add_options, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train the report's ResNet18, evaluate it and export it")
    train.add_argument("--out", required=True, type=Path, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    add_options(train)

    export = commands.add_parser("export", help="build a verified model directory (TorchScript, ONNX, weights)")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, action="append",
                        help="a checkpoint of `train` (best.pt); given more than once, checkpoints of one run (e.g. "
                             "best.pt and the last epoch's checkpoint.pt) are averaged weight by weight and the "
                             "average is evaluated on --data's validation split")
    source.add_argument("--weights", type=Path, help="shipped fp16 NAME.safetensors, verified against NAME.card.json")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--data", help="where the parity check takes real images (default: the training data; "
                                       "synthetic faces for --weights)")
    export.add_argument("--tta", choices=["none", "flip", "crops"], help="override the recorded TTA (--checkpoint)")
    export.add_argument("--parent-weight", type=float, default=0.0, metavar="W",
                        help="interpolate the checkpoints' weights with the shipped weights their run was fine-tuned "
                             "from: (1 - W) x the run's + W x the parent's (WiSE-FT, e.g. 0.5; --checkpoint only)")
    export.add_argument("--bn-faces", type=int, default=0, metavar="N",
                        help="recompute the batch-norm statistics on N clean training faces of --data seen through "
                             "the TTA's views, instead of the run's averages over augmented batches (e.g. 4096; "
                             "--checkpoint only)")
    export.add_argument("--explanations", type=int, metavar="N", default=0,
                        help="measure every saliency method's faithfulness on N validation faces (--data)")
    export.add_argument("--int8", action="store_true",
                        help="also quantize the ONNX model to int8, calibrated on --data's validation faces; "
                             "refused when it loses more than 0.5 points of accuracy there")
    export.add_argument("--save-weights", type=Path, metavar="NAME.safetensors",
                        help="also write the directory's weights as fp16 safetensors with their card, to ship")
    export.add_argument("--filters", action="store_true",
                        help="also precompute the default filter visualisations of every layer for the service")

    evaluate = commands.add_parser("evaluate", help="evaluate an exported model directory, print JSON")
    evaluate.add_argument("--model", required=True, type=Path)
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default="val", choices=["train", "val", "test"])
    evaluate.add_argument("--backend", default="torchscript", choices=["torchscript", "onnx"])
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    evaluate.add_argument("--tta", choices=["none", "flip", "crops"], help="default: the manifest's, as served")
    evaluate.add_argument("--plots", type=Path, help="write the confusion-matrix plot and metrics here")
    evaluate.add_argument("--explanations", type=int, metavar="N", default=0,
                          help="also measure every saliency method's faithfulness on N faces of the split")
    report = commands.add_parser("report", help="the course report's five questions for a model directory, as "
                                                "one self-contained HTML file, with the derivations checked")
    report.add_argument("--model", required=True, type=Path)
    report.add_argument("--data", help="faces for the saliency grid (default: the training data's val split)")
    report.add_argument("--out", type=Path, help="an HTML file (default: stored in the model directory, where the "
                        "service serves it at /model/report)")
    report.add_argument("--steps", type=int, default=64, help="gradient-ascent steps of the filter views")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export" and args.parent_weight:
        if not 0 < args.parent_weight <= 1:
            parser.error(f"--parent-weight {args.parent_weight}: a share of the parent's weights, in (0, 1]")
        if args.weights:
            parser.error("--parent-weight interpolates a run's checkpoints with their parent: use it with --checkpoint")
    if args.command == "export" and args.bn_faces:
        if args.bn_faces < 0:
            parser.error(f"--bn-faces {args.bn_faces}: a number of training faces, 0 or more")
        if args.weights:
            parser.error("--bn-faces recomputes a run's checkpoint's statistics: use it with --checkpoint")
    try:
        if args.command == "train":
            from training.train import train

            train(config_from_args(parser, args), args.out, args.resume)
        elif args.command == "export":
            from training.explanations import measure_explanations, precompute_filters
            from training.export import export_checkpoint, export_weights

            if args.weights:
                manifest = export_weights(args.weights, args.out, args.data)
            else:
                manifest = export_checkpoint(args.checkpoint, args.out, args.data, args.tta, args.parent_weight,
                                             args.bn_faces)
            print(f"exported model {manifest.version} to {args.out}")
            if args.int8:
                from training.quantize import quantize_model_dir

                info = quantize_model_dir(args.out, args.data or manifest.training.data)
                print(f"int8 model: accuracy {info.accuracy_int8:.4f} against {info.accuracy_fp32:.4f} in fp32 "
                      f"on {info.samples} {info.split} faces")
            if args.explanations:
                rows = measure_explanations(args.out, args.data or manifest.training.data, args.explanations)
                print(f"measured the faithfulness of {len(rows)} saliency methods on {args.explanations} faces")
            if args.save_weights:  # last: the card carries the faithfulness table too
                from training.model_card import ship

                card = ship(args.out, args.save_weights, args.data or manifest.training.data)
                evaluation = card["evaluation"]
                print(f"wrote {args.save_weights} ({card['bytes'] / 1e6:.1f} MB, sha256 {card['sha256'][:16]}...) "
                      f"and its card: accuracy {evaluation['accuracy']:.4f} (tta {evaluation['tta']}), "
                      f"{evaluation['accuracy_without_tta']:.4f} without, {evaluation['accuracy_fp16_weights']:.4f} "
                      "with the fp16 weights")
            if args.filters:
                print(f"precomputed {precompute_filters(args.out)} filter visualisations in {args.out}/filters")
        elif args.command == "report":
            from training.report import build_report, store_report

            if args.out:
                args.out.write_text(build_report(args.model, args.data, args.steps), encoding="utf-8")
                print(f"wrote {args.out}")
            else:
                print(f"stored {store_report(args.model, args.data, args.steps)}: the service serves it at "
                      "/model/report")
        else:
            from training.evaluate import evaluate_model_dir

            result = evaluate_model_dir(args.model, args.data, args.split, args.backend, args.tta, args.device,
                                        plots=args.plots)
            if args.explanations:
                from training.explanations import measure_explanations

                result["faithfulness"] = measure_explanations(args.model, args.data, args.explanations, store=False)
            print(json.dumps(result, indent=2))
    except (TrainingError, FileNotFoundError, ModelDirError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
