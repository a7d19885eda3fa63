"""Render every kustomization under k8s/ and validate the output against Kubernetes' schemas.

Renders each overlay (k8s/overlays/*) and each component through its test overlay
(tests/k8s/kustomize/<component>, which must exist) with `kubectl kustomize`, then
validates every object with kubernetes-validate in strict mode (unknown fields are errors)
for Kubernetes 1.29 (the first with native sidecars) and the newest version it ships.
Unlike the kubernetes-validate command, which only warns about kinds it has no schema for,
this fails on any such kind unless it is in CRDS, the explicit allow-list below.

    python scripts/k8s_check.py [--kubectl PATH] [--versions 1.29.0,1.37.0] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
TEST_OVERLAYS = ROOT / "tests" / "k8s" / "kustomize"
# Custom resources whose schemas kubernetes-validate does not ship (cert-manager's).
CRDS = frozenset({("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")})


def kustomizations() -> dict[str, Path]:
    """name → directory: every overlay and every component's test overlay."""
    found = {f"overlays/{d.name}": d for d in sorted((K8S / "overlays").iterdir())}
    for component in sorted((K8S / "components").iterdir()):
        test = TEST_OVERLAYS / component.name
        if not (test / "kustomization.yaml").exists():
            raise SystemExit(f"components/{component.name} has no test overlay at {test}")
        found[f"components/{component.name}"] = test
    return found


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def validate(docs: list[dict[str, Any]], versions: list[str]) -> tuple[list[str], Counter[str]]:
    """Errors, and how many objects of each kind were validated (or allow-listed)."""
    errors: list[str] = []
    kinds: Counter[str] = Counter()
    for doc in docs:
        what = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CRDS:
            kinds[f"{doc['kind']} (CRD, not validated)"] += 1
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{what}: no schema for {doc.get('apiVersion')} in {version}")
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                errors.append(f"{what} ({version}) {path}: {exc.message}")
        kinds[str(doc.get("kind"))] += 1
    return errors, kinds


def main() -> int:
    newest = kubernetes_validate.utils.latest_version()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default=shutil.which("kubectl") or "kubectl")
    parser.add_argument("--versions", default=f"1.29.0,{newest}")
    parser.add_argument("--out", help="also write each rendering to DIR/NAME.yaml")
    args = parser.parse_args()
    versions = args.versions.split(",")
    failed = False
    for name, directory in kustomizations().items():
        docs = render(args.kubectl, directory)
        if args.out:
            out = Path(args.out) / f"{name.replace('/', '-')}.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        errors, kinds = validate(docs, versions)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        print(f"{name}: {len(docs)} objects valid for {', '.join(versions)}: {summary}")
        for error in errors:
            print(f"  ERROR {error}")
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
