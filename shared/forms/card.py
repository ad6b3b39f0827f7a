"""書かない窓口: filling a form with the card's basic facts (基本4情報)."""

from __future__ import annotations

from datetime import date
from typing import Protocol

from shared.forms.models import CardFact, FieldType, FormTemplate, FormValues
from shared.forms.wareki import format_date


class CardFacts(Protocol):
    """The facts of the card; :class:`shared.protocol.CardBasicInfo` is one."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def birth_date(self) -> date: ...

    @property
    def sex(self) -> str: ...


def fill_from_card(template: FormTemplate, card: CardFacts) -> FormValues:
    """The values of every field of ``template`` that a card fact fills.

    Name and address are copied exactly as printed on the card (𠮷, 髙, 﨑 and other rare
    kanji are kept; nothing is normalised). Dates use the field's date style. A sex the
    field has no option for (``other``/``unknown`` on a form offering only 男・女) is left
    for the staff member to choose.
    """
    values: dict[str, str | bool] = {}
    for field in template.fields:
        match field.card:
            case None:
                continue
            case CardFact.NAME:
                values[field.id] = card.name
            case CardFact.ADDRESS:
                values[field.id] = card.address
            case CardFact.BIRTH_DATE:
                values[field.id] = format_date(card.birth_date, template.date_style_of(field))
            case CardFact.SEX:
                if field.type is FieldType.CHOICE and field.option(card.sex) is not None:
                    values[field.id] = card.sex
    return FormValues(form_id=template.id, values=values)
