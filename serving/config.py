"""TF Serving's model config file (`--model_config_file`) for one or several export bases.

    config = model_config([Path("exports/ctr"), Path("exports/cvr")],
                          labels={"ctr": {"stable": 1, "canary": 2}}, policy="specific")
    write_config(config, "models.config")      # text proto, as tensorflow_model_server reads it
    read_config("models.config")               # -> ModelServerConfig (parsed back)

The file is TF Serving's own `ModelServerConfig` message (tensorflow_serving.config), written
with protobuf's text format rather than by hand, so the server parses exactly what we checked.
Every base is checked on this machine before anything is written: its version folders exist and
hold a saved_model.pb, each label names one of them, and (by default) every labelled version is
one that the version policy loads — TF Serving refuses a label on a version it has not loaded
unless it runs with `--allow_version_labels_for_unavailable_models`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from kzoo.serving.client import version_dirs

# Model names and labels end up in REST paths (/v1/models/NAME/labels/LABEL): keep them URL-safe.
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
POLICIES = ("latest", "all", "specific")


class ConfigError(ValueError):
    """A serving-config request that cannot become a valid TF Serving config; says which part."""


def versions_of(base: Path) -> list[int]:
    """The version numbers under BASE that TF Serving would find (numeric folders), ascending.

    A numeric folder without saved_model.pb would make TF Serving fail to load that version,
    so it is an error here rather than a surprise at deploy time."""
    if not base.is_dir():
        raise ConfigError(f"{base}: not a directory (an export base: BASE/1/saved_model.pb, ...)")
    found = sorted(version_dirs(base), key=lambda p: int(p.name))
    if not found:
        raise ConfigError(f"{base}: no numeric version folder (BASE/1/saved_model.pb, ...); "
                          f"export one with `kzoo export RUN --out {base}`")
    broken = [p.name for p in found if not (p / "saved_model.pb").is_file()]
    if broken:
        raise ConfigError(f"{base}: version folder(s) {', '.join(broken)} hold no saved_model.pb; "
                          "TF Serving would fail to load them (remove them or re-export)")
    return [int(p.name) for p in found]


def parse_policy(text: str) -> tuple[str, int]:
    """'latest' | 'latest:N' | 'all' | 'specific' -> (kind, N for latest)."""
    kind, _, count = text.partition(":")
    if kind not in POLICIES or (count and kind != "latest"):
        raise ConfigError(f"--policy {text!r}: expected one of latest, latest:N, all, specific")
    if kind == "latest" and count:
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--policy {text!r}: N in latest:N must be a positive integer")
        return kind, int(count)
    return kind, 1


def parse_scoped(text: str) -> tuple[str | None, str]:
    """'[MODEL:]rest' -> (MODEL or None, rest), for --labels and --versions."""
    model, sep, rest = text.partition(":")
    return (model, rest) if sep else (None, text)


def parse_labels(text: str) -> dict[str, int]:
    """'stable=1,canary=2' -> {"stable": 1, "canary": 2}."""
    labels = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        label, sep, version = item.partition("=")
        if not sep or not version.strip().isdigit():
            raise ConfigError(f"--labels {text!r}: {item!r} is not LABEL=VERSION (e.g. stable=1,canary=2)")
        if not _NAME.match(label.strip()):
            raise ConfigError(f"--labels: label {label!r} may hold only letters, digits, '_', '-' and '.'")
        labels[label.strip()] = int(version)
    if not labels:
        raise ConfigError(f"--labels {text!r}: no LABEL=VERSION given")
    return labels


def parse_versions(text: str) -> list[int]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or not all(s.isdigit() for s in items):
        raise ConfigError(f"--versions {text!r}: expected version numbers, e.g. 1,2")
    return sorted({int(s) for s in items})


def scoped(values: list[str], names: list[str], option: str, parse) -> dict[str, object]:
    """Repeated `--option [MODEL:]VALUE` -> {model: parsed VALUE}; unscoped only with one model."""
    out = {}
    for text in values:
        model, rest = parse_scoped(text)
        if model is None:
            if len(names) != 1:
                raise ConfigError(f"{option} {text!r}: several models are configured ({', '.join(names)}); "
                                  f"say which one: {option} MODEL:{text}")
            model = names[0]
        if model not in names:
            raise ConfigError(f"{option} {text!r}: no model named {model!r} (models: {', '.join(names)})")
        out[model] = parse(rest)
    return out


def model_names(bases: list[Path], renames: list[str] = ()) -> list[str]:
    """Each base's model name: its folder name, or NAME from `--name NAME=BASE`."""
    names = [b.resolve().name for b in bases]
    for item in renames:
        name, sep, base = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--name {item!r}: expected NAME=BASE")
        matches = [i for i, b in enumerate(bases) if b.resolve() == Path(base).resolve()]
        if not matches:
            raise ConfigError(f"--name {item!r}: {base} is not one of the bases given ({', '.join(map(str, bases))})")
        names[matches[0]] = name
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(f"model name {name!r} may hold only letters, digits, '_', '-' and '.' "
                              "(it is part of the REST path); choose one with --name NAME=BASE")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model name(s) {', '.join(dupes)} used by several bases; name them apart with "
                          "--name NAME=BASE")
    return names


def model_config(bases: list, names: list[str] | None = None, labels: dict | None = None, policy: str = "",
                 versions: dict | None = None, root: str | None = None, allow_unloaded_labels: bool = False):
    """ModelServerConfig for the export `bases`.

    names: one model name per base (default: the folder names).
    labels: {model: {label: version}}.
    policy: 'latest[:N]', 'all' or 'specific'; default 'latest', or 'specific' when labels are given
        (TF Serving labels only versions it has loaded; `specific` loads exactly the labelled ones).
    versions: {model: [versions]} for the `specific` policy (default: that model's labelled versions).
    root: base_path as seen by the server, ROOT/<base folder name> (e.g. /models inside a container);
        default: the absolute path here.
    allow_unloaded_labels: let a label name a version that the policy does not load (the server then
        needs --allow_version_labels_for_unavailable_models).
    """
    from tensorflow_serving.config import model_server_config_pb2

    bases = [Path(b) for b in bases]
    names = names or model_names(bases)
    labels, versions = labels or {}, versions or {}
    kind, count = parse_policy(policy or ("specific" if labels else "latest"))
    config = model_server_config_pb2.ModelServerConfig()
    for base, name in zip(bases, names):
        found = versions_of(base)
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = str(PurePosixPath(root) / base.resolve().name) if root else str(base.resolve())
        model.model_platform = "tensorflow"
        own = labels.get(name, {})
        for label, version in own.items():
            if version not in found:
                raise ConfigError(f"--labels: {name}:{label}={version}, but {base} has version(s) "
                                  f"{', '.join(map(str, found))}")
        if kind == "specific":
            wanted = versions.get(name) or sorted(set(own.values()))
            if not wanted:
                raise ConfigError(f"--policy specific: say which versions of {name} to load "
                                  f"(--versions {name}:1,2, or label them with --labels)")
            missing = [v for v in wanted if v not in found]
            if missing:
                raise ConfigError(f"--versions {name}: version(s) {', '.join(map(str, missing))} not in {base} "
                                  f"(it has {', '.join(map(str, found))})")
            model.model_version_policy.specific.versions.extend(wanted)
            loaded = wanted
        elif kind == "all":
            model.model_version_policy.all.SetInParent()
            loaded = found
        else:
            model.model_version_policy.latest.num_versions = count
            loaded = found[-count:]
        if name in versions and kind != "specific":
            raise ConfigError(f"--versions {name}: only the 'specific' policy takes versions (--policy specific)")
        unloaded = {label: v for label, v in own.items() if v not in loaded}
        if unloaded and not allow_unloaded_labels:
            shown = ", ".join(f"{label}={v}" for label, v in unloaded.items())
            raise ConfigError(f"--labels {name}: {shown} names a version that the policy "
                              f"'{policy or kind}' does not load (it loads {', '.join(map(str, loaded))}); TF Serving "
                              "refuses such a label. Load it (--policy specific or all), or pass "
                              "--allow-unloaded-labels and run the server with "
                              "--allow_version_labels_for_unavailable_models")
        for label, version in own.items():
            model.version_labels[label] = version
    return config


def write_config(config, out) -> Path:
    """The config as a text proto at `out` (what --model_config_file reads)."""
    from google.protobuf import text_format

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text_format.MessageToString(config))
    return out


def read_config(path):
    """A models.config file parsed back into tensorflow_serving's ModelServerConfig."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())


def describe(config) -> list[str]:
    """One line per model: name, base path, policy, labels."""
    lines = []
    for m in config.model_config_list.config:
        kind = m.model_version_policy.WhichOneof("policy_choice") or "latest"
        if kind == "specific":
            kind += " " + ",".join(map(str, m.model_version_policy.specific.versions))
        elif kind == "latest":
            kind += f" {m.model_version_policy.latest.num_versions or 1}"
        labels = ", ".join(f"{k}={v}" for k, v in sorted(m.version_labels.items()))
        lines.append(f"  {m.name:<16} {m.base_path}  versions: {kind}" + (f"  labels: {labels}" if labels else ""))
    return lines
