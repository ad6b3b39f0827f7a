"""Certificates issued by HQ: the connector to the city's business systems, certificate
PDFs signed with pyHanko, issuance records and the public verification page.

See docs/issuance.md. The console uses :class:`IssuanceService` (``app[ISSUANCE]``).
"""

from hq_console.issuance.certificates import (
    CertificateKind,
    CertificateRequest,
    Fee,
    ResidentRecordRequest,
    SealCertificateRequest,
    TaxCertificateRequest,
    certificate_request,
)
from hq_console.issuance.connector import (
    CityRegister,
    Household,
    HouseholdMember,
    NoResidentMatch,
    ResidentFacts,
    ResidentLookup,
    ResidentMatch,
    SeveralResidentMatches,
)
from hq_console.issuance.errors import (
    DocumentNotFound,
    IssuanceError,
    RegisterError,
    RegisterUnavailable,
    SigningError,
)
from hq_console.issuance.service import (
    DocumentStatus,
    IssuanceService,
    Verdict,
    Verification,
)
from hq_console.issuance.web import ISSUANCE, LookupThrottle, setup_issuance

__all__ = [
    "ISSUANCE",
    "CertificateKind",
    "CertificateRequest",
    "CityRegister",
    "DocumentNotFound",
    "DocumentStatus",
    "Fee",
    "Household",
    "HouseholdMember",
    "IssuanceError",
    "IssuanceService",
    "LookupThrottle",
    "NoResidentMatch",
    "RegisterError",
    "RegisterUnavailable",
    "ResidentFacts",
    "ResidentLookup",
    "ResidentMatch",
    "ResidentRecordRequest",
    "SealCertificateRequest",
    "SeveralResidentMatches",
    "SigningError",
    "TaxCertificateRequest",
    "Verdict",
    "Verification",
    "certificate_request",
    "setup_issuance",
]
