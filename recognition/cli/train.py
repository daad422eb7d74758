"""Train a face-embedding network from a YAML config; the same command single-process or under horovodrun.

  python tools/train.py --config configs/demo.yaml --set data.root=DIR train.max_steps=N output.dir=DIR
  horovodrun -np 8 -H host1:4,host2:4 python tools/train.py --config configs/NAME.yaml
"""
import argparse
import json
import os

from recognition.engine.config import ConfigError, load_config


def build_parser():
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, dotted: data.root=DIR train.max_steps=100 "
                             "loss.params.s=32 verification.bins=a.bin,b.bin")
    parser.add_argument("--resume", metavar="auto|DIR",
                        help="'auto': newest complete checkpoint in output.dir (none: start fresh); "
                             "or a checkpoint folder")
    parser.add_argument("--pretrained", metavar="PATH",
                        help="initialise the network (not the classifier) from a checkpoint folder, "
                             "a net.params file or an exported PREFIX,EPOCH model")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    # under horovodrun every host checks the data and .bin paths itself and all are reported
    # (distributed.launched_by_horovodrun, which would import MXNet before train.threads is set)
    under_horovodrun = "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ
    try:
        config = load_config(args.config, args.set, check_files=not args.print_config,
                             check_paths=not under_horovodrun)
    except ConfigError as err:
        raise SystemExit(f"train: {err}")
    if config.train.threads:  # read by MXNet's engine when it starts, so before importing mxnet
        os.environ["OMP_NUM_THREADS"] = str(config.train.threads)
    if args.print_config:
        from recognition.engine.config import to_dict
        print(json.dumps(to_dict(config), indent=1))
        return
    from recognition.data.record import RecordError
    from recognition.engine.trainer import TrainingError, WorkerLost, fail, train
    from recognition.data.dataset import TooManyBadRecords
    try:
        results = train(config, resume=args.resume, pretrained=args.pretrained)
    except WorkerLost as err:
        # Horovod is broken now and the interpreter's teardown (MXNet's engine, Horovod's threads)
        # can take seconds, while horovodrun's SIGTERM is on its way: arriving after Python has
        # restored the default handler it kills the process and the shell's 'Terminated' becomes
        # the job's last line instead of this account. Our files are closed, so leave at once.
        fail(str(err), at_once=True)
    except (RecordError, TrainingError, TooManyBadRecords, ValueError, OSError) as err:
        fail(str(err))
    from recognition import distributed as dist
    if dist.rank() == 0:
        print(json.dumps({k: v for k, v in results.items() if k != "verification"} |
                         {"verification": {name: {"accuracy": r["accuracy"], "tar_at_far_1e-3": r["tar_at_far_1e-3"]}
                                           for name, r in results.get("verification", {}).items()}}))


if __name__ == "__main__":
    main()
