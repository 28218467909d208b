"""Tenants, principals and roles: who may do what, for which grid company.

A **tenant** is a grid company, named by its market participant id (GLN-13 or EIC-16, `libs.events.parties`). Every
principal (an API key, an FTP partner, an MQTT device account, a SOAP client) belongs to one tenant and has one
role; only the platform operator belongs to none and sees every tenant.

| role | may |
|---|---|
| ``source`` | deliver readings and alarms for the meterpoints assigned to it (nothing else, not even read) |
| ``reader`` | read its tenant's data |
| ``operator`` | read, and run its tenant's operations (work-order transitions, redrives) |
| ``admin`` | all of the above, and manage its tenant's principals, meterpoints and assignments |
| ``platform`` | everything, for every tenant (the hub's own operators) |

``reader < operator < admin < platform``; ``source`` stands apart: a delivering system is not a reader, and
an admin is not a source (a reading is accepted only from the source assigned to its meterpoint).

An id outside the caller's tenant is answered exactly like an id that does not exist (404, a "not found" SOAP
fault): `Principal.sees` is the one test, so no service spells it differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from libs.events.parties import is_valid_eic, is_valid_gln

__all__ = ["Principal", "PrincipalKind", "Role", "validate_tenant"]


class Role(StrEnum):
    """What a principal may do (see the module doc)."""

    SOURCE = "source"
    READER = "reader"
    OPERATOR = "operator"
    ADMIN = "admin"
    PLATFORM = "platform"

    def allows(self, required: Role) -> bool:
        """True when this role may do what ``required`` may."""
        if self is required or self is Role.PLATFORM:
            return True
        if required is Role.SOURCE or self is Role.SOURCE:
            return False
        return _RANK[self] >= _RANK[required]


_RANK = {Role.READER: 0, Role.OPERATOR: 1, Role.ADMIN: 2, Role.PLATFORM: 3}


class PrincipalKind(StrEnum):
    """How a principal authenticates."""

    API_KEY = "api_key"
    FTP_PARTNER = "ftp_partner"
    DEVICE = "device"
    SOAP_CLIENT = "soap_client"


def validate_tenant(tenant: str | None, role: Role) -> str | None:
    """``tenant`` if it fits ``role`` (ValueError otherwise): a grid company id, or None for the platform role only."""
    if role is Role.PLATFORM:
        if tenant is not None:
            raise ValueError("the platform role belongs to no tenant")
        return None
    if tenant is None:
        raise ValueError(f"role {role} belongs to a tenant (a grid company's GLN-13 or EIC-16)")
    if not (is_valid_gln(tenant) or is_valid_eic(tenant)):
        raise ValueError("a tenant is a grid company's GLN-13 or EIC-16 with a correct check character")
    return tenant


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name (key client, FTP login, device, SOAP user), tenant and role."""

    name: str
    kind: PrincipalKind
    role: Role
    tenant: str | None

    def __post_init__(self) -> None:
        validate_tenant(self.tenant, self.role)

    @property
    def is_platform(self) -> bool:
        """True for the hub's own operators (every tenant)."""
        return self.role is Role.PLATFORM

    def sees(self, tenant: str | None) -> bool:
        """Whether data of ``tenant`` is visible to this principal (None: data no tenant owns yet: platform only)."""
        return self.role is Role.PLATFORM or (tenant is not None and tenant == self.tenant)

    def may(self, required: Role) -> bool:
        """Whether this principal's role allows ``required``."""
        return self.role.allows(required)
