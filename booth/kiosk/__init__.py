"""The resident's touch UI, served by the booth agent to the local kiosk browser."""

from booth.kiosk.app import create_kiosk_app

__all__ = ["create_kiosk_app"]
