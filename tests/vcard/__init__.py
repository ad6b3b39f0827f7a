"""A virtual My Number card for vpcd (the vsmartcard PC/SC driver); see :mod:`tests.vcard.card`."""

from tests.vcard.card import (
    ATR,
    CardProfile,
    VirtualMyNumberCard,
    encode_basic_info,
    encode_tlv,
)

__all__ = ["ATR", "CardProfile", "VirtualMyNumberCard", "encode_basic_info", "encode_tlv"]
