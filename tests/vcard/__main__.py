"""``python -m tests.vcard [--port 35963] [--name ...]``: put a virtual My Number card on a
vpcd reader of a running pcscd until Ctrl-C (for trying the booth by hand, e.g. with
``python -m booth card-read --reader "Virtual PCD 00 00" --pin-stdin``)."""

from __future__ import annotations

import argparse
import contextlib

from tests.vcard.card import FIRST_PORT, CardProfile, VirtualMyNumberCard


def main() -> None:
    defaults = CardProfile()
    parser = argparse.ArgumentParser(prog="python -m tests.vcard", description=__doc__)
    parser.add_argument("--port", type=int, default=FIRST_PORT, help="35963 or 35964")
    parser.add_argument("--name", default=defaults.name)
    parser.add_argument("--address", default=defaults.address)
    parser.add_argument("--birth", default=defaults.birth, help="YYYYMMDD")
    parser.add_argument("--sex", default=defaults.sex, help="1 male, 2 female, 3 other")
    parser.add_argument("--number", default=defaults.individual_number, help="個人番号")
    parser.add_argument("--pin", default=defaults.pin)
    parser.add_argument("--tries", type=int, default=defaults.tries_left)
    args = parser.parse_args()
    profile = CardProfile(
        name=args.name,
        address=args.address,
        birth=args.birth,
        sex=args.sex,
        individual_number=args.number,
        pin=args.pin,
        tries_left=args.tries,
    )
    card = VirtualMyNumberCard(profile, port=args.port)
    card.insert()
    print(f"card on the reader at port {args.port}; Ctrl-C removes it", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        card.gone.wait()
    card.remove()


if __name__ == "__main__":
    main()
