"""Registry files: resolution, comment-preserving load, validation with line numbers, locked append.

`record` never rewrites what is already in the file: the new entry is rendered by ruamel.yaml and
appended under `models:` (which must be the file's last top-level key), then the whole result is
parsed and validated before it atomically replaces the file, under an exclusive lock on a sidecar
`.lock` file. So the banner and every entry's prose survive byte for byte, and concurrent records
never lose an entry.

Which file: `resolve_registry` is the one resolution order (--registry, $PERFTUNE_KNOWN_GOOD_REGISTRY,
configs/known-good-configs.yaml walking up, the per-user file). A deploy check also consults the
entries shipped inside the package (`load_for_check`), so a workaround perftune ships is enforced
whichever file the order lands on. Simulated campaigns record into `sim_registry_path()`, never into
a shipped or repository registry (`is_shipped_or_repo_registry`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from perftune.errors import ConfigError, RegistryError, config_error_from
from perftune.registry.schema import Champion, ModelEntry, Registry, RequiredFlag
from perftune.util.atomic import write_text

ENV_VAR = "PERFTUNE_KNOWN_GOOD_REGISTRY"
REPO_RELATIVE = Path("configs") / "known-good-configs.yaml"

BANNER = """\
# =====================================================================================================
#  KNOWN-GOOD SERVING CONFIGS (schema known_good_config_v1)
#
#  Flags listed under required_flags are NOT tuning choices: without them a model does not boot,
#  wedges under load, or serves wrong answers. `perftune deploy` refuses a deploy that drops one
#  (fail-closed). Append with `perftune known-good record`; promote DRAFT -> VERDICT by hand, in review.
#  Every flag names its evidence. Validate with `perftune known-good validate`.
# =====================================================================================================
schema: known_good_config_v1
models:
"""


# A copy of the repository's configs/known-good-configs.yaml, installed with the package (package-data);
# a unit test keeps the two identical.
SHIPPED_REGISTRY = Path(__file__).resolve().parent / "shipped" / "known-good-configs.yaml"


def user_registry_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "perftune" / "known-good-configs.yaml"


def sim_registry_path() -> Path:
    """Per-user registry for entries from simulated runs, beside the default lake (user data folder)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "perftune" / "sim-known-good-configs.yaml"


def resolve_registry(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """The one resolution order: --registry, then $PERFTUNE_KNOWN_GOOD_REGISTRY, then
    configs/known-good-configs.yaml walking up from the current folder, then the per-user file."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / REPO_RELATIVE).is_file():
            return d / REPO_RELATIVE
    return user_registry_path()


def is_shipped_or_repo_registry(path: str | Path) -> bool:
    """The package's shipped registry, or a repository's configs/known-good-configs.yaml (reviewed
    files: a campaign must not append simulated entries to them)."""
    p = Path(path).expanduser().resolve()
    return p == SHIPPED_REGISTRY or p.parts[-2:] == REPO_RELATIVE.parts


def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments, key order, quoting
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096
    return y


def _line_of(doc: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key on `loc` that the YAML document knows."""
    node, line = doc, None
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            if hasattr(node, "lc"):
                line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            break
    return line


def parse_registry(text: str, path: Path) -> tuple[Any, Registry]:
    """Parse and validate; errors name the file and line."""
    try:
        doc = _yaml().load(StringIO(text))
    except MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RegistryError(
            f"{where}: malformed YAML: {e.problem}", hint="fix the YAML syntax at that line"
        ) from e
    except YAMLError as e:
        raise RegistryError(f"{path}: malformed YAML: {e}", hint="fix the YAML syntax") from e
    if not isinstance(doc, dict):
        raise RegistryError(
            f"{path}: not a registry (top level is not a mapping)",
            hint="start from the banner: schema: known_good_config_v1 / models:",
        )
    try:
        reg = Registry.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        line = _line_of(doc, loc)
        where = f"{path}:{line}" if line else str(path)
        raise RegistryError(
            f"{where}: {'.'.join(map(str, loc))}: {err['msg']}",
            hint="see `perftune known-good validate --help` for the schema",
        ) from e
    return doc, reg


def load_registry(path: Path) -> Registry:
    if not path.exists():
        raise RegistryError(
            f"registry not found: {path}",
            hint=f"pass --registry, set ${ENV_VAR}, or create one with `perftune known-good record`",
        )
    return parse_registry(path.read_text(encoding="utf-8"), path)[1]


def load_shipped() -> Registry:
    """The entries shipped inside the package (empty if the file is missing from a broken install)."""
    if not SHIPPED_REGISTRY.is_file():
        return Registry.model_validate({"schema": "known_good_config_v1", "models": {}})
    return load_registry(SHIPPED_REGISTRY)


def with_shipped(reg: Registry) -> Registry:
    """`reg` plus every shipped entry it lacks. For a model in both, `reg`'s entry wins whole (the
    user's registry is where a reviewed correction lands: a newer engine version, a changed flag), so
    shipped rules are never mixed into a user's entry."""
    return reg.model_copy(update={"models": {**load_shipped().models, **reg.models}})


def load_for_check(path: Path, *, must_exist: bool) -> Registry:
    """The entries a deploy check consults: the resolved registry's, merged with the shipped ones.

    A registry named explicitly (must_exist) must be there; a default location that does not exist
    contributes nothing, and the shipped entries still apply.
    """
    if path.exists() or must_exist:
        return with_shipped(load_registry(path))
    return load_shipped()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def render_entry(model_id: str, entry: ModelEntry) -> str:
    """YAML text for one `models:` item, indented for appending under `models:`."""
    data = entry.model_dump(mode="json", exclude_none=True)
    buf = StringIO()
    _yaml().dump({"models": {model_id: data}}, buf)
    lines = buf.getvalue().splitlines(keepends=True)
    assert lines[0].startswith("models:")
    return "".join(lines[1:])


def record(path: Path, model_id: str, entry: ModelEntry) -> Registry:
    """Append a model entry. Fails (and leaves the file untouched) if the model exists or the file is bad."""
    with _locked(path):
        text = path.read_text(encoding="utf-8") if path.exists() else BANNER
        doc, reg = parse_registry(text, path)
        if model_id in reg.models:
            raise RegistryError(
                f"{path}: model '{model_id}' is already registered",
                hint="registry entries are append-only; edit the existing entry by hand (in review), e.g. to "
                "add a flag or promote DRAFT to VERDICT",
            )
        keys = list(doc.keys())
        if keys[-1:] != ["models"] or (
            doc["models"] is not None and not isinstance(doc["models"], CommentedMap)
        ):
            raise RegistryError(
                f"{path}: `models:` must be the last top-level key, as a block mapping",
                hint="move `models:` to the end of the file so entries can be appended",
            )
        if doc["models"] is not None and doc["models"].fa.flow_style():
            raise RegistryError(
                f"{path}: `models:` is a flow mapping ({{...}})",
                hint="write it as a block mapping (one entry per indented key)",
            )
        new_text = text if text.endswith("\n") else text + "\n"
        new_text += render_entry(model_id, entry)
        _, new_reg = parse_registry(new_text, path)  # validate the result before it replaces anything
        if model_id not in new_reg.models or len(new_reg.models) != len(reg.models) + 1:
            raise RegistryError(
                f"{path}: appending '{model_id}' did not produce a valid registry",
                hint="check the file's indentation under `models:`",
            )
        write_text(path, new_text)
        return new_reg


def parse_required_flag(spec: str) -> dict[str, str]:
    """'FLAG|MATCH|SEVERITY|WHY|AFFECTED|EVIDENCE' (MATCH may itself contain '|')."""
    parts = spec.split("|")
    if len(parts) < 6:
        raise ConfigError(
            f"--required-flag needs 6 fields separated by '|', got {len(parts)}: {spec!r}",
            hint="FLAG|MATCH|SEVERITY|WHY|AFFECTED|EVIDENCE, e.g. "
            "'--additional-config|gdn_prefill_backend.*triton|crash-high-c|wedges at c>=8|vllm 0.22|"
            "docs/x.md'",
        )
    flag, match = parts[0], "|".join(parts[1:-4])
    severity, why, affected, evidence = parts[-4:]
    return {
        "flag": flag,
        "match": match,
        "severity": severity,
        "why": why,
        "affected": affected,
        "evidence": evidence,
    }


def record_entry(
    model_id: str,
    *,
    registry: str | Path | None = None,
    slug: str,
    engine: str,
    required_flags: Sequence[str] = (),
    grind_frontier: str,
    engine_versions: str = "",
    hardware: str = "",
    arch_note: str = "",
    fallback: str = "",
    champion: dict[str, str] | None = None,
) -> tuple[Path, ModelEntry]:
    """Build, validate and append a model's entry to the resolved registry (see `record`)."""
    try:
        flags = [RequiredFlag.model_validate(parse_required_flag(f)) for f in required_flags]
        entry = ModelEntry(
            slug=slug,
            engine=engine,
            engine_versions=engine_versions,
            hardware=hardware,
            arch_note=arch_note,
            fallback=fallback,
            grind_frontier=grind_frontier,
            required_flags=flags,
            champion=Champion.model_validate(champion) if champion else None,
        )
    except ValidationError as e:
        raise config_error_from(
            e,
            "invalid entry: ",
            hint="severity is one of boot-blocker | crash-high-c | deploy-correctness | perf",
        ) from e
    path = resolve_registry(registry)
    record(path, model_id, entry)
    return path, entry
