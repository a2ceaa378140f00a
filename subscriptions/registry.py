"""The privacy registries: the operator's facts that the collection notice is generated from.

Loaded from a TOML file (``MAILMAG_REGISTRY_FILE``; ``registry.example.toml`` beside this
module describes a complete fictional operator) into frozen, validated models. The checks
here keep the promises consistent: a joint user may only receive listed categories, every
country abroad that a joint user sits in must describe its regime and safeguards, and a
magazine must serve a listed purpose of use.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from subscriptions.errors import ConfigurationError
from subscriptions.paths import EXAMPLE_REGISTRY as EXAMPLE_REGISTRY

LOCALES = ("en", "ja")

Key = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Text(Frozen):
    """A human-readable text in every supported locale."""

    en: str = Field(min_length=1)
    ja: str = Field(min_length=1)

    def __call__(self, locale: str) -> str:
        return self.ja if locale == "ja" else self.en


class Operator(Frozen):
    country: CountryCode
    name: Text
    address: Text
    representative: Text
    postal_address: Text


class ProtectionManager(Frozen):
    name: Text
    title: Text
    department: Text
    contact: Text


class Purpose(Frozen):
    key: Key
    text: Text


class DataCategory(Frozen):
    key: Key
    label: Text
    field: str | None = Field(default=None, description="Subscriber field it covers, if any.")


class Policy(Frozen):
    text: Text


class JointUser(Frozen):
    key: Key
    name: Text
    country: CountryCode
    categories: tuple[Key, ...]


class ResponsibleParty(Frozen):
    name: Text
    address: Text
    representative: Text


class JointUse(Frozen):
    categories: tuple[Key, ...]
    purposes: tuple[Text, ...]
    transfer_method: Text
    responsible: ResponsibleParty
    users: tuple[JointUser, ...]


class Country(Frozen):
    code: CountryCode
    name: Text
    regime: Text
    safeguards: Text


class ContactPoint(Frozen):
    name: Text
    address: Text
    email: str
    phone: str
    hours: Text


class Fields(Frozen):
    required: tuple[str, ...]
    consequence: Text


class MagazineEntry(Frozen):
    slug: Key
    title: Text
    description: Text
    purpose: Key


PROFILE_FIELDS = ("email", "name", "company", "department", "title", "phone")


class SMTPRoute(Frozen):
    """How a processor receives the messages it sends for us (its password is a setting:
    ``MAILMAG_PROCESSOR_PASSWORDS='{"<key>": "..."}'``)."""

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None


class Processor(Frozen):
    """A party entrusted with handling personal data for us (APPI Art. 27(5)(i))."""

    key: Key
    name: str
    contract_reference: str
    contract_date: date
    contract_end: date | None = None
    country: CountryCode
    purposes: tuple[Key, ...]
    fields: tuple[str, ...]
    retention_days: int = Field(ge=0)
    next_review: date
    active: bool = True
    smtp: SMTPRoute | None = None
    pull: bool = Field(
        default=False, description="Fetches its batches through /processor/v1 instead of SMTP."
    )

    def unusable(self, today: date) -> str | None:
        """Why the processor may receive nothing today, or None."""
        if not self.active:
            return "it is inactive"
        if self.contract_end is not None and self.contract_end < today:
            return f"its contract ended on {self.contract_end.isoformat()}"
        if self.next_review < today:
            return f"its review was due on {self.next_review.isoformat()}"
        return None


class RouteRule(Frozen):
    """Recipients whose address domain matches go to ``processor``. A pattern is a domain
    (``example.com``: that domain only) or a suffix starting with a dot (``.jp``: every
    domain under it, the nearest thing to a country an address carries)."""

    processor: Key
    domains: tuple[str, ...] = Field(min_length=1)

    @field_validator("domains")
    @classmethod
    def _lowercase(cls, domains: tuple[str, ...]) -> tuple[str, ...]:
        for domain in domains:
            if not re.fullmatch(r"\.?[a-z0-9-]+(\.[a-z0-9-]+)*", domain.lower()):
                raise ValueError(f"{domain!r} is not a domain or a .suffix")
        return tuple(d.lower() for d in domains)


class SplitRoute(Frozen):
    """An issue sent through several processors: the first matching rule picks each
    recipient's processor, everyone else goes to ``default``; each recipient to exactly one."""

    key: Key
    rules: tuple[RouteRule, ...] = Field(min_length=1)
    default: Key

    @property
    def processors(self) -> tuple[str, ...]:
        keys = [r.processor for r in self.rules] + [self.default]
        return tuple(dict.fromkeys(keys))


class Registry(Frozen):
    policy_url: str
    operator: Operator
    protection_manager: ProtectionManager
    purposes: tuple[Purpose, ...]
    data_categories: tuple[DataCategory, ...]
    third_party_provision: Policy
    entrustment: Policy
    joint_use: JointUse
    countries: tuple[Country, ...] = ()
    contact_point: ContactPoint
    fields: Fields
    magazines: tuple[MagazineEntry, ...] = ()
    processors: tuple[Processor, ...] = ()
    routes: tuple[SplitRoute, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        categories = {c.key for c in self.data_categories}
        purposes = {p.key for p in self.purposes}
        countries = {c.code for c in self.countries}
        for category in self.data_categories:
            if category.field is not None and category.field not in PROFILE_FIELDS:
                raise ValueError(f"data category {category.key}: unknown field {category.field}")
        described = {c.field for c in self.data_categories}
        missing = [f for f in PROFILE_FIELDS if f not in described]
        if missing:
            raise ValueError(f"data_categories: no category describes the fields {missing}")
        for key in self.joint_use.categories:
            if key not in categories:
                raise ValueError(f"joint_use.categories: {key} is not a data category")
        for user in self.joint_use.users:
            extra = set(user.categories) - set(self.joint_use.categories)
            if extra:
                raise ValueError(
                    f"joint user {user.key}: categories {sorted(extra)} are not jointly used"
                )
            if user.country != self.operator.country and user.country not in countries:
                raise ValueError(
                    f"joint user {user.key} is in {user.country}: describe that country "
                    "under [[countries]] (regime and safeguards)"
                )
        for magazine in self.magazines:
            if magazine.purpose not in purposes:
                raise ValueError(f"magazine {magazine.slug}: unknown purpose {magazine.purpose}")
        for processor in self.processors:
            unknown = set(processor.fields) - set(PROFILE_FIELDS)
            if unknown:
                raise ValueError(f"processor {processor.key}: unknown fields {sorted(unknown)}")
            if set(processor.purposes) - purposes:
                raise ValueError(f"processor {processor.key}: unknown purpose")
            if (processor.smtp is not None or processor.pull) and "email" not in processor.fields:
                raise ValueError(f"processor {processor.key} sends mail but may not see addresses")
        processor_keys = {p.key for p in self.processors}
        for route in self.routes:
            if route.key in processor_keys:
                raise ValueError(f"route {route.key}: a processor has that key")
            unknown_processors = set(route.processors) - processor_keys
            if unknown_processors:
                raise ValueError(
                    f"route {route.key}: unknown processors {sorted(unknown_processors)}"
                )
        for field in self.fields.required:
            if field not in PROFILE_FIELDS:
                raise ValueError(f"fields.required: unknown field {field}")
        return self

    @cached_property
    def foreign_countries(self) -> tuple[Country, ...]:
        """Countries abroad where a joint user sits, in the order they are listed."""
        used = {u.country for u in self.joint_use.users if u.country != self.operator.country}
        return tuple(c for c in self.countries if c.code in used)

    @cached_property
    def field_labels(self) -> dict[str, Text]:
        """The label of each subscriber field, from the data category that describes it."""
        return {c.field: c.label for c in self.data_categories if c.field is not None}

    @cached_property
    def country_names(self) -> dict[str, Text]:
        return {c.code: c.name for c in self.countries}

    def category(self, key: str) -> DataCategory:
        return next(c for c in self.data_categories if c.key == key)

    def processor(self, key: str) -> Processor | None:
        return next((p for p in self.processors if p.key == key), None)

    def route_processors(self, key: str) -> tuple[str, ...] | None:
        """The processors an issue's route sends through, or None if there is no such route."""
        if self.processor(key) is not None:
            return (key,)
        split = self.split_route(key)
        return split.processors if split else None

    def split_route(self, key: str) -> SplitRoute | None:
        return next((r for r in self.routes if r.key == key), None)

    def joint_user(self, key: str) -> JointUser | None:
        return next((u for u in self.joint_use.users if u.key == key), None)


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate the registry file; errors name the file and the problem."""
    source = path or EXAMPLE_REGISTRY
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
        return Registry.model_validate(data)
    except OSError as exc:
        raise ConfigurationError(f"MAILMAG_REGISTRY_FILE: cannot read {source}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"MAILMAG_REGISTRY_FILE: {source}: {exc}") from None
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            detail = f"{where}: {message}" if where else message
        else:
            detail = str(exc)
        raise ConfigurationError(f"MAILMAG_REGISTRY_FILE: {source}: {detail}") from None
