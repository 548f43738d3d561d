"""The teacher's licence: a registry of licence terms shipped as data, and the review a run cannot skip.

A distillation run turns the teacher's outputs into training data, so the question that matters is
not "what licence are the weights under" but "may the outputs train another model, for this use".
`gen/licences.toml` records, for common teachers, what their terms say about exactly that, with the
source consulted. A user registry in the same format is consulted first, to add teachers or correct
an entry.

    registry = load_registry(Path("my-licences.toml"))       # or load_registry() for the shipped one
    licence = resolve_licence(registry, model, given="apache-2.0")
    result = review(licence, "apache-2.0", "commercial-model", acknowledged=False)
    if result.blocked: ...                                    # refuse to run; print result.reasons

Intended uses (what the user will do with the student trained on this data):

    research          non-commercial research or evaluation; the student is not used in a business
    internal          the student is used inside an organisation, not distributed (business use counts)
    commercial-model  the student is distributed, sold or offered as a service
    competing-model   the student competes with the teacher's vendor (e.g. a general-purpose assistant
                      trained on an API model's outputs)

Decisions: "ok", "ok-with-obligations" (allowed; the reasons and obligations must travel with the
data), "blocked" (the run must not start), "acknowledged-conflict" (blocked, but the user acknowledged
it; the run may proceed and the caller records the review in the manifest).

This module reads terms; it does not give legal advice, and a registry entry is only as good as the
`source` it names.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gen.config import parse_toml
from gen.errors import ConfigError

INTENDED_USES = ("research", "internal", "commercial-model", "competing-model")
DECISIONS = ("ok", "ok-with-obligations", "acknowledged-conflict", "blocked")
SHIPPED_REGISTRY = "licences.toml"

UNKNOWN_LICENCE = "the teacher's licence is unknown: pass --license ID or add it to a licence registry"

# Uses that count as commercial. `internal` is here on purpose: an organisation using a student in its
# own operations is commercial use under the non-commercial licences in the registry (the Mistral
# Research License says so in terms, the Qwen research licence allows "research or evaluation purposes
# only", CC BY-NC excludes use "directed towards commercial advantage").
_COMMERCIAL_USES = frozenset({"internal", "commercial-model", "competing-model"})


# ------------------------------------------------------------------------------------------ file format


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _LicenceSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._:+-]*$")
    name: str = Field(min_length=1)
    model_patterns: list[str] = Field(default_factory=list)
    train_other_models: Literal["allowed", "conditional", "forbidden"]
    competing_models: Literal["allowed", "forbidden"]
    commercial_use: bool
    conditions: list[str] = Field(default_factory=list)
    obligations: list[str] = Field(default_factory=list)
    attribution: str = ""
    source: str = Field(min_length=1)
    source_url: str = Field(min_length=1)
    source_date: str = Field(min_length=1)
    note: str = ""


class _RegistryFile(_Strict):
    licence: list[_LicenceSpec] = Field(min_length=1)


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True, slots=True)
class Licence:
    """One registry entry: a licence (or API terms) and the models it covers."""

    id: str
    name: str
    model_patterns: tuple[str, ...]
    train_other_models: Literal["allowed", "conditional", "forbidden"]
    competing_models: Literal["allowed", "forbidden"]
    commercial_use: bool
    conditions: tuple[str, ...]
    obligations: tuple[str, ...]
    attribution: str
    source: str
    source_url: str
    source_date: str
    note: str
    origin: str  # the registry file the entry came from

    def matches(self, model: str) -> bool:
        """True when a pattern matches the model id or its last "/" segment, ignoring case."""
        names = _candidate_names(model)
        return any(fnmatch.fnmatchcase(n, p.lower()) for p in self.model_patterns for n in names)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "model_patterns": list(self.model_patterns),
            "train_other_models": self.train_other_models,
            "competing_models": self.competing_models,
            "commercial_use": self.commercial_use,
            "conditions": list(self.conditions),
            "obligations": list(self.obligations),
            "attribution": self.attribution,
            "source": self.source,
            "source_url": self.source_url,
            "source_date": self.source_date,
            "note": self.note,
            "origin": self.origin,
        }


@dataclass(frozen=True, slots=True)
class RegistrySource:
    """A registry file that was read, and its hash, so a manifest says which terms decided."""

    path: str
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Registry:
    """Licence entries in lookup order: the user's registry first, then the shipped one."""

    licences: tuple[Licence, ...]
    sources: tuple[RegistrySource, ...]

    def for_model(self, model: str) -> Licence | None:
        """The first entry with a pattern matching `model`, or None."""
        for licence in self.licences:
            if licence.matches(model):
                return licence
        return None

    def get(self, licence_id: str) -> Licence | None:
        """The entry for a licence id (case-insensitive).

        Several entries may share an id (apache-2.0 covers Qwen2.5, Qwen3, Mistral...); the generic one,
        without model patterns, is preferred, else the first with that id.
        """
        wanted = licence_id.strip().lower()
        same = [lic for lic in self.licences if lic.id == wanted]
        for licence in same:
            if not licence.model_patterns:
                return licence
        return same[0] if same else None

    def ids(self) -> list[str]:
        """Every licence id the registry knows, sorted."""
        return sorted({lic.id for lic in self.licences})

    def as_dict(self) -> dict[str, Any]:
        return {"sources": [s.as_dict() for s in self.sources]}


@dataclass(frozen=True, slots=True)
class Review:
    """The outcome of the licence review for one run."""

    decision: Literal["ok", "ok-with-obligations", "acknowledged-conflict", "blocked"]
    reasons: list[str]
    obligations: list[str]
    licence_id: str | None
    intended_use: str
    acknowledged: bool
    licence: Licence | None = None

    @property
    def blocked(self) -> bool:
        """True when the run must not start."""
        return self.decision == "blocked"

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "obligations": list(self.obligations),
            "licence_id": self.licence_id,
            "intended_use": self.intended_use,
            "acknowledged": self.acknowledged,
            "licence": None if self.licence is None else self.licence.as_dict(),
        }


# ------------------------------------------------------------------------------------------ loading


def load_registry(extra: Path | str | None = None) -> Registry:
    """The shipped registry, extended by a user registry (same format) whose entries come first.

    A user file that cannot be read or is invalid raises ConfigError naming the file.
    """
    shipped_licences, shipped_source = _shipped()
    if extra is None:
        return Registry(licences=shipped_licences, sources=(shipped_source,))
    path = Path(extra)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "no such licence registry") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a licence registry file") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    user = _parse(raw, str(path))
    return Registry(
        licences=user + shipped_licences,
        sources=(RegistrySource(str(path), _sha256(raw)), shipped_source),
    )


@functools.cache
def _shipped() -> tuple[tuple[Licence, ...], RegistrySource]:
    ref = resources.files(__package__ or "gen").joinpath(SHIPPED_REGISTRY)
    where = str(ref)
    try:
        raw = ref.read_bytes()
    except OSError as e:  # a broken install (the data file was not packaged)
        raise ConfigError(where, f"the shipped licence registry cannot be read: {e}") from None
    return _parse(raw, where), RegistrySource(where, _sha256(raw))


def _parse(raw: bytes, where: str) -> tuple[Licence, ...]:
    data = parse_toml(raw, where)
    try:
        spec = _RegistryFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(where, _describe(e, data)) from None
    return tuple(_licence(s, where) for s in spec.licence)


def _licence(s: _LicenceSpec, origin: str) -> Licence:
    return Licence(
        id=s.id,
        name=s.name,
        model_patterns=tuple(s.model_patterns),
        train_other_models=s.train_other_models,
        competing_models=s.competing_models,
        commercial_use=s.commercial_use,
        conditions=tuple(s.conditions),
        obligations=tuple(s.obligations),
        attribution=s.attribution,
        source=s.source,
        source_url=s.source_url,
        source_date=s.source_date,
        note=s.note,
        origin=origin,
    )


def _describe(e: ValidationError, data: Any) -> str:
    """One validation error as `licence[2] (id 'x'): field: message`, 1-based like a reader counts.

    An unknown key is reported before anything else: a typo also makes the intended key "missing", and
    the typo is what the user must fix.
    """
    errors = e.errors()
    first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
    loc = list(first["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "licence" and isinstance(loc[1], int):
        index = loc[1]
        where = f"licence[{index + 1}]"
        try:
            entry_id = data["licence"][index].get("id")
        except (KeyError, IndexError, TypeError, AttributeError):
            entry_id = None
        if isinstance(entry_id, str):
            where += f" (id {entry_id!r})"
        loc = loc[2:]
    field = ".".join(str(p) for p in loc)
    if first["type"] == "missing":
        problem = f"missing key {field!r}"
    elif first["type"] == "extra_forbidden":
        problem = f"unknown key {field!r}"
    else:
        problem = f"{field}: {first['msg']}" if field else first["msg"]
    return f"{where}: {problem}" if where else problem


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _candidate_names(model: str) -> tuple[str, ...]:
    m = model.strip().lower()
    tail = m.rsplit("/", 1)[-1]
    return (m,) if tail == m else (m, tail)


# ------------------------------------------------------------------------------------------ review


def resolve_licence(registry: Registry, model: str, given: str | None) -> Licence | None:
    """The licence that governs the teacher's outputs.

    The registry's entry for the model wins over a licence id given on the command line: a given id only
    decides when the registry does not know the model. A given id that disagrees with the registry is
    not silently obeyed; `review` reports it (and blocks unless acknowledged).
    """
    match = registry.for_model(model)
    if match is not None:
        return match
    if given:
        return registry.get(given)
    return None


def review(
    licence: Licence | None,
    licence_id_given: str | None,
    intended_use: str,
    acknowledged: bool,
) -> Review:
    """Decide whether a run may use this teacher's outputs for `intended_use`.

    `licence` is what `resolve_licence` returned; `licence_id_given` is the id the user passed (or the
    prompt file set), which is checked against it.
    """
    if intended_use not in INTENDED_USES:
        raise ValueError(f"unknown intended use {intended_use!r} (known: {', '.join(INTENDED_USES)})")
    given = licence_id_given.strip().lower() if licence_id_given and licence_id_given.strip() else None

    if licence is None:
        if given is None:
            reason = UNKNOWN_LICENCE
        else:
            reason = (
                f"licence {given!r} is not in the licence registry, so its terms cannot be reviewed: "
                "add it to a licence registry"
            )
        return _finish([reason], [], [], given, intended_use, acknowledged, None)

    blockers: list[str] = []
    if given is not None and given != licence.id:
        # A wrong licence claim is exactly what an audit must catch (e.g. a Claude model run with
        # --license apache-2.0, or Qwen2.5-72B claimed as apache-2.0 like its smaller siblings). The
        # review goes on with the registry's licence, whose terms are the ones that actually apply.
        blockers.append(
            f"the given licence {given!r} contradicts the licence registry, which lists this teacher under "
            f"{licence.id!r} ({licence.name}); the review applies {licence.id!r}"
        )

    # `forbidden` blocks every intended use, research included. The terms marked forbidden in the
    # registry have no research carve-out: Llama 3.0 §1.b.v bars using output "to improve any other large
    # language model" whatever the purpose, and Anthropic's Usage Policy bars model distillation without
    # prior authorization. The narrow exceptions (a Llama 3 derivative student; Anthropic's written
    # authorization or a non-competing specialised tool) are facts about the student the review cannot
    # see, so they go through acknowledgement, which the manifest records.
    if licence.train_other_models == "forbidden":
        blockers.append(f"{licence.name} forbids using the teacher's outputs to train other models")
    if intended_use == "competing-model" and licence.competing_models == "forbidden":
        blockers.append(
            f"{licence.name} forbids using the teacher's outputs for a model that competes with its vendor"
        )
    if intended_use in _COMMERCIAL_USES and not licence.commercial_use:
        blockers.append(
            f"{licence.name} allows non-commercial use only, and {intended_use!r} is commercial use"
        )
    return _finish(
        blockers,
        list(licence.conditions),
        list(licence.obligations),
        licence.id,
        intended_use,
        acknowledged,
        licence,
    )


def review_teacher(
    registry: Registry,
    model: str,
    licence_id_given: str | None,
    intended_use: str,
    acknowledged: bool,
) -> Review:
    """`resolve_licence` then `review`: the one call a run needs."""
    licence = resolve_licence(registry, model, licence_id_given)
    return review(licence, licence_id_given, intended_use, acknowledged)


def _finish(
    blockers: list[str],
    conditions: list[str],
    obligations: list[str],
    licence_id: str | None,
    intended_use: str,
    acknowledged: bool,
    licence: Licence | None,
) -> Review:
    if blockers:
        decision: Literal["ok", "ok-with-obligations", "acknowledged-conflict", "blocked"] = (
            "acknowledged-conflict" if acknowledged else "blocked"
        )
    elif (licence is not None and licence.train_other_models == "conditional") or conditions or obligations:
        decision = "ok-with-obligations"
    else:
        decision = "ok"
    return Review(
        decision=decision,
        reasons=blockers + conditions,
        obligations=obligations,
        licence_id=licence_id,
        intended_use=intended_use,
        acknowledged=acknowledged,
        licence=licence,
    )
