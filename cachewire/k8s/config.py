"""The injection settings `cachewire inject` and `cachewire injector` share.

Flag first, then its CACHEWIRE_INJECTOR_* variable, then `InjectConfig`'s default. The
injector's Deployment sets the variables; a user runs `cachewire inject --hub …`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from cachewire.common.config import lookup
from cachewire.k8s.inject import InjectConfig

# field → (flag, variable, help)
SHARED = {
    "image": (
        "--sidecar-image",
        "CACHEWIRE_INJECTOR_SIDECAR_IMAGE",
        "image of the injected sidecar (annotation cachewire.io/sidecar-image overrides)",
    ),
    "hub": ("--hub", "CACHEWIRE_INJECTOR_HUB", "the hub's gRPC address the sidecars use"),
    "topics": (
        "--topics",
        "CACHEWIRE_INJECTOR_TOPICS",
        "topics for pods without cachewire.io/topics (empty: the annotation is required)",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = InjectConfig()
    for name, (flag, env, text) in SHARED.items():
        default = getattr(defaults, name)
        parser.add_argument(
            flag, dest=name, metavar="VALUE", help=f"{text} [env: {env}; default: {default!r}]"
        )


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> InjectConfig:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (flag, variable, _) in SHARED.items():
        found = lookup(flag, getattr(args, name), env, (variable,))
        if found is not None:
            values[name] = found[1].strip()
    return dataclasses.replace(InjectConfig(), **values)
