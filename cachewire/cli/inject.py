"""`cachewire inject -f FILE`: add the sidecar to the workloads of a YAML file (`-`: stdin).

`cachewire inject -f deploy.yaml | kubectl apply -f -` works without the webhook. A
malformed `cachewire.io/*` annotation fails the whole run with a message naming the
workload and the annotation, and prints nothing: never half a file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from cachewire.k8s import config as k8s_config
from cachewire.k8s.inject import AnnotationError
from cachewire.k8s.workloads import inject_yaml


def main(argv: Sequence[str], prog: str = "cachewire inject") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--filename", required=True, help="YAML file, or - for stdin")
    k8s_config.add_arguments(parser)
    args = parser.parse_args(list(argv))
    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
        out = inject_yaml(text, k8s_config.from_args(args))
    except OSError as exc:
        print(f"{prog}: {args.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except yaml.YAMLError as exc:
        print(f"{prog}: {args.filename}: not valid YAML: {exc}", file=sys.stderr)
        return 1
    except AnnotationError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0
