"""書かない窓口: forms as data, validation, filling from the card, the signed application PDF.

Templates are TOML files in ``shared/forms/templates/`` (``docs/forms.md``); the models
travel between the HQ console and the booth. Typical use::

    catalog = TemplateCatalog.load()
    template = catalog.get("juminhyo-request")
    values = fill_from_card(template, card).merged(staff_values)
    result = validate_values(template, values)
    view = resident_view(template, result.values)          # booth screen
    pdf = render_application_pdf(template, result.values, signature, meta)
"""

from __future__ import annotations

from shared.forms.card import CardFacts, fill_from_card
from shared.forms.display import display_value, resident_view
from shared.forms.models import (
    DEPARTMENT_NAMES,
    ApplicationMeta,
    CardFact,
    ChoiceOption,
    DateStyle,
    Department,
    DisplayItem,
    DisplaySection,
    FieldError,
    FieldType,
    FormField,
    FormLayout,
    FormTemplate,
    FormValues,
    LayoutCell,
    LayoutSection,
    ResidentView,
    Signature,
    SignaturePoint,
    ValidationResult,
)
from shared.forms.pdf import PageArea, render_application_pdf, signature_area
from shared.forms.templates import TEMPLATE_DIR, TemplateCatalog, TemplateError, load_template
from shared.forms.validation import (
    FieldValueError,
    normalize_kana,
    normalize_phone,
    normalize_postal_code,
    normalize_value,
    validate_values,
)
from shared.forms.wareki import (
    DateInputError,
    format_date,
    format_date_both,
    parse_date,
    to_seireki,
    to_wareki,
)

__all__ = [
    "DEPARTMENT_NAMES",
    "TEMPLATE_DIR",
    "ApplicationMeta",
    "CardFact",
    "CardFacts",
    "ChoiceOption",
    "DateInputError",
    "DateStyle",
    "Department",
    "DisplayItem",
    "DisplaySection",
    "FieldError",
    "FieldType",
    "FieldValueError",
    "FormField",
    "FormLayout",
    "FormTemplate",
    "FormValues",
    "LayoutCell",
    "LayoutSection",
    "PageArea",
    "ResidentView",
    "Signature",
    "SignaturePoint",
    "TemplateCatalog",
    "TemplateError",
    "ValidationResult",
    "display_value",
    "fill_from_card",
    "format_date",
    "format_date_both",
    "load_template",
    "normalize_kana",
    "normalize_phone",
    "normalize_postal_code",
    "normalize_value",
    "parse_date",
    "render_application_pdf",
    "resident_view",
    "signature_area",
    "to_seireki",
    "to_wareki",
    "validate_values",
]
